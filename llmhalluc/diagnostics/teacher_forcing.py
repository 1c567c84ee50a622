"""Teacher forcing: what a model's next-token distribution and final hidden state say at given positions.

Probabilities are teacher-forced: one batched, left-padded forward pass gives P(token) at every
decision point of a sequence, and the argmax chain of the same pass stands for greedy decoding
(greedy continues with the argmax, so the chain is what greedy would emit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmhalluc import evaluation
from llmhalluc.decoding import prefix_plan, prime


@dataclass
class Readings:
    """What one teacher-forced pass over a batch of sequences reads (read_sequences)."""

    #: per sequence, per end n: (P(token | seq[:n]), the argmax next id[, the token's rank])
    stats: list[list[tuple]]
    #: per sequence with a span: the largest -log P(token | everything before it) over the span's tokens
    surprisal: list[float | None]
    #: per sequence with a span: the final hidden state (what the LM head reads) at the span's last token
    states: list[Any]


def read_sequences(model: Any, sequences: Sequence[Sequence[int]], ends: Sequence[Sequence[int]], *,
                   token_id: int, batch_size: int, pad_id: int, with_rank: bool = False,
                   spans: Sequence[tuple[int, int] | None] | None = None,
                   group_prefix: Sequence[int] | None = None) -> Readings:
    """Everything the diagnostics read off a model by teacher forcing, in one forward pass per batch.

    For each sequence and each n in its ends: P(token_id | seq[:n]) and the argmax next id (with_rank:
    also token_id's rank among all next ids, 1 = the argmax, ties ranking below it). For each span
    (start, stop) of a step inside its sequence: the step's surprisal, its most surprising token (a
    model that would have written the right number finds a near miss surprising where the number
    stands), and the decision state at the step's last token (states as float64 rows on the CPU).

    Sequences are read as generation reads them (decoding.prime): the prefix every sequence shares once,
    then each group's (group_prefix[i]: how many of sequence i's ids it shares with its group), up to the
    first position read, then the rest left-padded, position ids counted over real tokens, so neither the
    sharing nor the padding changes a reading; only the logits from the first needed position on are
    computed (`logits_to_keep`), which keeps a hub model's large vocabulary affordable.
    """
    import torch

    spans = list(spans) if spans is not None else [None] * len(sequences)
    readings = Readings(stats=[[] for _ in sequences], surprisal=[None] * len(sequences),
                        states=[None] * len(sequences))
    wanted = [i for i in range(len(sequences)) if ends[i] or spans[i]]
    order = sorted(wanted, key=lambda i: -len(sequences[i]))
    hidden_wanted = any(spans)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [sequences[i] for i in chunk]
        # Per row, the first position read: an end's, or the one predicting a span's first token. The prefixes
        # read into the cache stop before it (the plan of the rows cut there is the plan of the whole rows).
        firsts = [min([n - 1 for n in ends[i]] + ([spans[i][0] - 1] if spans[i] else [])) for i in chunk]
        plan = prefix_plan([row[:first + 1] for row, first in zip(rows, firsts, strict=True)],
                           None if group_prefix is None else [group_prefix[i] for i in chunk])
        primed = prime(model, rows, plan, pad_id=pad_id)
        # Position n of a sequence stands in column width - len + n of the own ids, as in a left-padded batch.
        width = primed.own.shape[1]
        first = min(width - len(row) + f for row, f in zip(rows, firsts, strict=True))
        with torch.inference_mode():
            out = primed.forward(model, logits_to_keep=width - first, output_hidden_states=hidden_wanted)
        logits = out.logits
        for row, index in enumerate(chunk):
            offset = width - len(sequences[index])
            if ends[index]:
                selected = logits[row, [offset + n - 1 - first for n in ends[index]]].float()
                columns = [selected.softmax(-1)[:, token_id].tolist(), selected.argmax(-1).tolist()]
                if with_rank:
                    columns.append((selected > selected[:, token_id:token_id + 1]).sum(-1).add(1).tolist())
                readings.stats[index] = list(zip(*columns, strict=True))
            if spans[index]:
                begin, stop = spans[index]
                predicting = logits[row, offset + begin - 1 - first:offset + stop - 1 - first].float().log_softmax(-1)
                targets = torch.tensor(list(sequences[index][begin:stop]), device=predicting.device)
                readings.surprisal[index] = float(-predicting.gather(-1, targets[:, None]).min())
                readings.states[index] = out.hidden_states[-1][row, offset + stop - 1].double().cpu()
    return readings


def next_token_stats(model: Any, sequences: Sequence[Sequence[int]], ends: Sequence[Sequence[int]], *,
                     token_id: int, batch_size: int, pad_id: int, with_rank: bool = False,
                     group_prefix: Sequence[int] | None = None) -> list[list[tuple]]:
    """read_sequences' next-token readings alone: for each sequence and each n in its ends, (P(token_id |
    seq[:n]), the argmax next id[, token_id's rank])."""
    return read_sequences(model, sequences, ends, token_id=token_id, batch_size=batch_size, pad_id=pad_id,
                          with_rank=with_rank, group_prefix=group_prefix).stats


def cross_fitted_scores(wrong: Any, right: Any) -> tuple[list[float], list[float]] | None:
    """Held-out scores of a linear probe that tells wrong from right steps by their decision states.

    Why: detection AUROC at 0.5 has two causes an accuracy cannot tell apart: the model does not
    compute whether the step is right (nothing in its state separates them: a limit of size, data
    or training), or it does and the backtrack row does not read it (a training-signal problem).
    wrong[i] and right[i] are the states of one item (same context); items go to two folds by
    index parity. The probe is the difference of the class means on one fold (a mass-mean probe:
    no fitting, no tuning, sound with fewer items than dimensions), on states standardised by
    that fold, and scores the other fold. None under four items (a fold would hold one pair).
    """
    import torch

    n = len(wrong)
    if n < 4:
        return None
    fold = torch.arange(n) % 2
    scores = (torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64))
    for held in (0, 1):
        train, test = fold != held, fold == held
        both = torch.cat([wrong[train], right[train]])
        mean, std = both.mean(0), both.std(0).clamp(min=1e-8)
        direction = ((wrong[train] - mean) / std).mean(0) - ((right[train] - mean) / std).mean(0)
        for states, out in zip((wrong, right), scores, strict=True):
            out[test] = ((states[test] - mean) / std) @ direction
    return scores[0].tolist(), scores[1].tolist()


def pad_id(model: Any, tokenizer: Any) -> int:
    """The id padding is written with (masked out, so any real id serves), as generation chooses it."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return min(evaluation.stop_ids(tokenizer, getattr(model, "generation_config", None)))

