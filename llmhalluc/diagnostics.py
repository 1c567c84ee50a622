"""Diagnostics: why a model does, or does not, backtrack.

Greedy accuracy and the backtrack rate say *that* a model never backtracks, not
*why*. Backtracking needs four skills in a row, and each is measured apart:

- detection: after a wrong step, P(backtrack) is higher than after a right one
  (means and AUROC over the two sets of decision points);
  with beside it `detection_hidden_auroc`, how well a linear probe of the
  model's final hidden state at the same points tells wrong from right (does
  its state know, where the token does not say?), and `detection_surprise_auroc`,
  how well the step's most surprising token does (does it know at the number?);
- counting: given a first backtrack, it emits exactly as many as the error has
  tokens, then stops (the unit of today's per-token backtrack);
- repair: after an exact retraction, it writes the right step (and reaches the
  right final answer); beside it the same step written from the context with
  the retracted tokens gone (`repair_step_resolved`), which tells a model that
  cannot write the step from one that the wrong step left in its context derails;
- and end to end, correction (greedy from the wrong prefix: it backtracks, its
  resolved answer is right) against false positives (greedy from the right
  prefix: it backtracks anyway).

The *probe* measures these on gold solutions with one step replaced by a near
miss made by prepare's own generator (`augment.nudge_number`), so the error is
the kind SFT data taught the model to retract. *Own errors* measure detection on
the model's own sampled solutions, whose `a op b = c` steps can be recomputed
(`arithmetic.check_step`). The *sampled* eval (pass@k, maj@k) and *transitions*
between models complete the picture.

Probabilities are teacher-forced: one batched, left-padded forward pass gives
P(backtrack) at every decision point of a sequence, and the argmax chain of the
same pass stands for greedy counting (greedy continues with the argmax, so the
chain is what greedy would emit). Only repair, correction and false positives
generate, through evaluation.generate_transformers like the main eval.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmhalluc import evaluation
from llmhalluc.answers import normalize_answer
from llmhalluc.backtrack import render_error, retraction_for
from llmhalluc.datasets.arithmetic import check_step
from llmhalluc.datasets.augment import nudge_number
from llmhalluc.datasets.records import Record
from llmhalluc.evaluation import left_padded, share

if TYPE_CHECKING:
    from llmhalluc.params.sections import EvalParams

#: score(assistant ids, record) -> evaluation.score's row for that completion.
Scorer = Callable[[Sequence[int], Record], dict[str, Any]]


# --------------------------------------------------------------------------- statistics


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney U).

    None when either side is empty. A score that does not separate the two sets
    (every value equal) gives exactly 0.5.
    """
    if not positives or not negatives:
        return None
    ranked = sorted([(v, True) for v in positives] + [(v, False) for v in negatives], key=lambda x: x[0])
    rank_sum, index = 0.0, 0
    while index < len(ranked):  # mid-ranks over runs of ties
        end = index
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[index][0]:
            end += 1
        mid = (index + end) / 2 + 1
        rank_sum += mid * sum(1 for v in ranked[index:end + 1] if v[1])
        index = end + 1
    n_pos, n_neg = len(positives), len(negatives)
    return round((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), 6)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), from n samples of which c are right."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (no answer does not vote); a tie goes to the answer given first."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


# --------------------------------------------------------------------------- teacher forcing


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
                   spans: Sequence[tuple[int, int] | None] | None = None) -> Readings:
    """Everything the diagnostics read off a model by teacher forcing, in one forward pass per batch.

    For each sequence and each n in its ends: P(token_id | seq[:n]) and the argmax next id (with_rank:
    also token_id's rank among all next ids, 1 = the argmax, ties ranking below it). For each span
    (start, stop) of a step inside its sequence: the step's surprisal, its most surprising token (a
    model that would have written the right number finds a near miss surprising where the number
    stands), and the decision state at the step's last token (states as float64 rows on the CPU).

    Sequences are left-padded like generation, with position ids counted from each sequence's first
    real token, so padding changes nothing; only the logits from the first needed position on are
    computed (`logits_to_keep`), which keeps a hub model's large vocabulary affordable.
    """
    import torch

    spans = list(spans) if spans is not None else [None] * len(sequences)
    readings = Readings(stats=[[] for _ in sequences], surprisal=[None] * len(sequences),
                        states=[None] * len(sequences))
    wanted = [i for i in range(len(sequences)) if ends[i] or spans[i]]
    order = sorted(wanted, key=lambda i: -len(sequences[i]))
    device = next(model.parameters()).device
    hidden_wanted = any(spans)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_padded([sequences[i] for i in chunk], pad_id)
        width = input_ids.shape[1]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # The first position whose logits are read: an end's, or the one predicting a span's first token.
        needed = [width - len(sequences[i]) + n - 1 for i in chunk for n in ends[i]]
        needed += [width - len(sequences[i]) + spans[i][0] - 1 for i in chunk if spans[i]]
        first = min(needed)
        with torch.inference_mode():
            out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        position_ids=positions.to(device), logits_to_keep=width - first,
                        output_hidden_states=hidden_wanted)
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
                     token_id: int, batch_size: int, pad_id: int, with_rank: bool = False) -> list[list[tuple]]:
    """read_sequences' next-token readings alone: for each sequence and each n in its ends, (P(token_id |
    seq[:n]), the argmax next id[, token_id's rank])."""
    return read_sequences(model, sequences, ends, token_id=token_id, batch_size=batch_size, pad_id=pad_id,
                          with_rank=with_rank).stats


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


# --------------------------------------------------------------------------- the injected-error probe


@dataclass(frozen=True)
class ProbeItem:
    """One probed position: a gold prefix, then the gold step (right) or a near miss (wrong).

    Ids are the assistant's, after the prompt; `retraction` is what undoes
    `wrong` exactly under the model's backtrack unit.
    """

    record: Record
    position: int
    prompt: list[int]
    context: list[int]
    right: list[int]
    wrong: list[int]
    retraction: list[int]
    right_step: str
    wrong_step: str


def probe_item(record: Record, position: int, *, prompt: list[int], tokenize: Callable[[str], list[int]],
               backtrack_id: int, seed: int, unit: str = "token") -> ProbeItem | None:
    """The probe's one statement of the backtrack unit: what the wrong prefix, its exact retraction and the
    repair target are. None when the step has no number to nudge.

    As train_sft encodes (any unit): the steps are
    tokenized segment by segment as SFT saw them ("" before the first, " " before
    the others), the error is prepare's near miss of the gold step, and its exact
    retraction follows the model's unit (`Retraction.render_error`): one backtrack per
    error token for `token`, one backtrack for `step` and `retry` (the wrong step stays
    before it; the unit's resolution drops it, so the repair target is the same).
    The near miss is seeded by (seed, record, position), so every
    model is probed with the same errors.
    """
    steps = record.steps
    right_step = steps[position]
    wrong_step = nudge_number(right_step, random.Random(f"{seed}:{record.id}:{position}"))
    if wrong_step is None or wrong_step == right_step:
        return None
    separator = " " if position else ""
    context = [t for index, step in enumerate(steps[:position]) for t in tokenize((" " if index else "") + step)]
    wrong = tokenize(separator + wrong_step)
    return ProbeItem(record=record, position=position, prompt=prompt, context=context,
                     right=tokenize(separator + right_step), wrong=wrong,
                     retraction=render_error(unit, wrong, backtrack_id),
                     right_step=right_step, wrong_step=wrong_step)


def probe_items(tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, seed: int, unit: str,
                positions: list[int] | str = "all") -> list[ProbeItem]:
    """The probe's items for records at the given step positions (probe_positions), tokenized as train_sft
    encodes steps, each prompt as the chat template opens the assistant turn (evaluation.prompt_ids)."""

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    items = []
    for r in records:
        prompt = evaluation.prompt_ids(tokenizer, r.prompt)
        items += [item for position in probe_positions(len(r.steps), positions)
                  if (item := probe_item(r, position, prompt=prompt, tokenize=tokenize, backtrack_id=backtrack_id,
                                         seed=seed, unit=unit)) is not None]
    return items


def reachability(model: Any, tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, unit: str,
                 seed: int, batch_size: int) -> dict[str, Any]:
    """How reachable the backtrack token is: mean P(backtrack) right after a near-miss wrong step and after the
    right one, and the median rank of the token after the wrong step (1 = greedy would emit it).

    train_sft reports it for its first records before and after training. The items are the
    probe's (`probe_items` at every step),
    teacher-forced in one batched pass (`next_token_stats`); the model is put in eval mode for
    it and left in the mode it was in. Unrounded probabilities would be noise in `dvc metrics
    show`, rounded to 6 decimals they would all read 0 for a fresh token: 6 significant digits.
    """
    import statistics

    items = probe_items(tokenizer, records, backtrack_id=backtrack_id, seed=seed, unit=unit)
    if not items:
        return {"items": 0}
    wrong = [i.prompt + i.context + i.wrong for i in items]
    right = [i.prompt + i.context + i.right for i in items]
    training = model.training
    model.eval()
    try:
        stats = next_token_stats(model, wrong + right, [[len(s)] for s in wrong + right], token_id=backtrack_id,
                                 batch_size=batch_size, pad_id=pad_id(model, tokenizer), with_rank=True)
    finally:
        model.train(training)
    after_wrong, after_right = [s[0] for s in stats[:len(items)]], [s[0] for s in stats[len(items):]]

    def significant(value: float) -> float:
        return float(f"{value:.6g}")

    return {
        "items": len(items),
        "p_after_wrong": significant(sum(p for p, _, _ in after_wrong) / len(items)),
        "p_after_right": significant(sum(p for p, _, _ in after_right) / len(items)),
        "rank_after_wrong_median": statistics.median(rank for _, _, rank in after_wrong),
    }


def probe_positions(step_count: int, positions: list[int] | str) -> list[int]:
    """The step indexes a record is probed at: all, or each listed index (negative from the end) that exists."""
    if positions == "all":
        return list(range(step_count))
    chosen = [p if p >= 0 else step_count + p for p in positions]
    return sorted({p for p in chosen if 0 <= p < step_count})


def run_probe(model: Any, tokenizer: Any, items: Sequence[ProbeItem], *, backtrack_id: int, batch_size: int,
              max_new_tokens: int, score: Scorer) -> list[dict[str, Any]]:
    """One row per item: detection probabilities and the counting chain (teacher-forced), then repair,
    correction and false positive (greedy continuations, all three in one batched generation)."""
    import torch

    if not items:
        return []
    pad = pad_id(model, tokenizer)
    wrong_seqs = [i.prompt + i.context + i.wrong + i.retraction for i in items]
    right_seqs = [i.prompt + i.context + i.right for i in items]
    wrong_ends = [[len(i.prompt + i.context + i.wrong) + m for m in range(len(i.retraction) + 1)] for i in items]
    # One teacher-forced pass: P(backtrack) and the counting chain, and each step's surprisal and decision state.
    steps = [(len(i.prompt + i.context), len(i.prompt + i.context + i.wrong)) for i in items] + \
        [(len(i.prompt + i.context), len(s)) for i, s in zip(items, right_seqs, strict=True)]
    read = read_sequences(model, wrong_seqs + right_seqs, wrong_ends + [[len(s)] for s in right_seqs],
                          token_id=backtrack_id, batch_size=batch_size, pad_id=pad, spans=steps)
    wrong_stats, right_stats = read.stats[:len(items)], read.stats[len(items):]
    surprise = read.surprisal
    states = torch.stack(read.states)
    hidden = cross_fitted_scores(states[:len(items)], states[len(items):]) or ([None] * len(items),) * 2

    repair = [i.prompt + i.context + i.wrong + i.retraction for i in items]
    correction = [i.prompt + i.context + i.wrong for i in items]
    false_positive = right_seqs
    resolved_prefix = [i.prompt + i.context for i in items]  # the retraction applied to the context itself
    sampling = evaluation.Sampling(max_new_tokens=max_new_tokens)
    generated = evaluation.generate_transformers(model, tokenizer,
                                                 repair + correction + false_positive + resolved_prefix,
                                                 batch_size=batch_size, sampling=sampling)
    n = len(items)
    rows = []
    for index, item in enumerate(items):
        chain = [argmax for _, argmax in wrong_stats[index]]
        # Exact: after the supplied first unit, the argmax continues the retraction to its end, then stops.
        counted = all(chain[m] == item.retraction[m] for m in range(1, len(item.retraction))) \
            and chain[len(item.retraction)] != backtrack_id
        repaired = score(item.context + item.wrong + item.retraction + generated[index], item.record)
        corrected = score(item.context + item.wrong + generated[n + index], item.record)
        kept = score(item.context + item.right + generated[2 * n + index], item.record)
        fresh = score(item.context + generated[3 * n + index], item.record)
        expected = tokenizer.decode(item.context + item.right, skip_special_tokens=True)

        rows.append({
            "id": item.record.id, "position": item.position, "right_step": item.right_step,
            "wrong_step": item.wrong_step, "error_tokens": len(item.wrong),
            # Unrounded: a model that never learned the token still ranks wrong above right steps (or not)
            # at 1e-9, and AUROC must see that; only the summary means are rounded.
            "p_backtrack_wrong": wrong_stats[index][0][0],
            "p_backtrack_right": right_stats[index][0][0],
            # The held-out linear probe's scores of the same two decision states (cross_fitted_scores).
            "hidden_score_wrong": hidden[0][index], "hidden_score_right": hidden[1][index],
            # The most surprising token of each step, where it stands (read_sequences).
            "surprisal_wrong": surprise[index], "surprisal_right": surprise[n + index],
            "counting_exact": counted,
            "repair_step": _writes_step(repaired["resolved"], expected),
            # The same step written with the retracted tokens gone from the context (as if generation rolled
            # its cache back): repair_step far below it means the wrong step left in context is what breaks it.
            "repair_step_resolved": _writes_step(fresh["resolved"], expected),
            "repair_answer": repaired["correct"],
            "correction_backtracked": corrected["backtracks"] > 0,
            "correction_right": corrected["correct"],
            "false_positive": kept["backtracks"] > 0,
            "repair": repaired["raw"], "correction": corrected["raw"], "continuation_right": kept["raw"],
            "continuation_resolved": fresh["raw"],
        })
    return rows


def _writes_step(resolved: str, expected: str) -> bool:
    """Whether the resolved text is the expected text (context + the right step), then a break or nothing."""
    rest = resolved[len(expected):]
    return resolved.startswith(expected) and (not rest or rest[0].isspace())


def summarize_probe(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The probe's metrics: detection means and AUROC (wrong steps are the positives), then shares of items."""
    wrong = [r["p_backtrack_wrong"] for r in rows]
    right = [r["p_backtrack_right"] for r in rows]
    n = len(rows)
    return {
        "items": n,
        "detection_p_wrong": _mean(wrong),
        "detection_p_right": _mean(right),
        "detection_auroc": auroc(wrong, right),
        "detection_surprise_auroc": auroc([r["surprisal_wrong"] for r in rows], [r["surprisal_right"] for r in rows]),
        "detection_hidden_auroc": auroc([r["hidden_score_wrong"] for r in rows if r["hidden_score_wrong"] is not None],
                                        [r["hidden_score_right"] for r in rows if r["hidden_score_right"] is not None]),
        **{key: share(sum(r[key] for r in rows), n) for key in (
            "counting_exact", "repair_step", "repair_step_resolved", "repair_answer", "correction_backtracked",
            "correction_right", "false_positive")},
    }


# --------------------------------------------------------------------------- own errors


_SENTENCE_BREAK = re.compile(r"(?<=\.)\s+")


def split_steps(text: str) -> list[str]:
    """The sentences of a resolved completion, each ending in '.' except perhaps an unfinished last one.

    A step ends with '.' followed by white space or the end, so "7.5" stays one step; step_ends
    reads the last of them, and mining walks them all against the gold steps.
    """
    text = text.strip()
    return [s for s in _SENTENCE_BREAK.split(text) if s] if text else []


def step_ends(ids: Sequence[int], tokenizer: Any, backtrack_id: int, unit: str = "token") -> list[tuple[int, str]]:
    """(n, step) for each step the completion finishes: ids[:n] ends with the step's final '.', and step is
    the last sentence of the backtrack-resolved text so far (resolved by the model's retraction unit, so a
    step-unit model's retracted step is gone from it, as eval's score reads the completion).

    A '.' ends a step when what follows is nothing, a backtrack, or a token that
    starts with white space (so "2." of "2.5" does not).
    """
    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)
    ends = []
    for index, token in enumerate(ids):
        if token == backtrack_id or not tokenizer.decode([token]).endswith("."):
            continue
        following = ids[index + 1] if index + 1 < len(ids) else None
        if following is not None and following != backtrack_id and not tokenizer.decode([following])[:1].isspace():
            continue
        text = tokenizer.decode(retraction.resolve(ids[:index + 1]), skip_special_tokens=True).strip()
        if text:
            ends.append((index + 1, _SENTENCE_BREAK.split(text)[-1]))
    return ends


def own_error_rows(model: Any, tokenizer: Any, prompts: Sequence[list[int]], samples: Sequence[list[int]], *,
                   backtrack_id: int, batch_size: int, unit: str = "token") -> list[list[dict[str, Any]]]:
    """For each sample, one row per step whose arithmetic can be recomputed: right or wrong, P(backtrack)
    right after it (teacher-forced on the sample itself), and whether the sample retracts it (a backtrack
    follows at once, as a retraction of every unit begins: per token, or the one of step / retry)."""
    checked = []
    for ids in samples:
        checked.append([(n, step, verdict) for n, step in step_ends(ids, tokenizer, backtrack_id, unit)
                        if (verdict := check_step(step)) is not None])
    stats = next_token_stats(model, [p + s for p, s in zip(prompts, samples, strict=True)],
                             [[len(p) + n for n, _, _ in steps] for p, steps in zip(prompts, checked, strict=True)],
                             token_id=backtrack_id, batch_size=batch_size, pad_id=pad_id(model, tokenizer))
    return [[{"step": step, "right": verdict, "p_backtrack": prob,  # unrounded, for AUROC
              "retracted": n < len(ids) and ids[n] == backtrack_id}
             for (n, step, verdict), (prob, _) in zip(steps, found, strict=True)]
            for ids, steps, found in zip(samples, checked, stats, strict=True)]


def summarize_own_errors(step_rows: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Detection on the model's own steps: P(backtrack) after wrong vs right ones, AUROC, and the share of
    wrong (and, as false positives, right) steps the sample retracts."""
    steps = [s for sample in step_rows for s in sample]
    wrong = [s for s in steps if not s["right"]]
    right = [s for s in steps if s["right"]]
    return {
        "samples": len(step_rows),
        "steps_checked": len(steps),
        "steps_wrong": len(wrong),
        "p_backtrack_after_wrong": _mean([s["p_backtrack"] for s in wrong]),
        "p_backtrack_after_right": _mean([s["p_backtrack"] for s in right]),
        "auroc": auroc([s["p_backtrack"] for s in wrong], [s["p_backtrack"] for s in right]),
        "retracted_wrong": share(sum(s["retracted"] for s in wrong), len(wrong)),
        "retracted_right": share(sum(s["retracted"] for s in right), len(right)),
    }


# --------------------------------------------------------------------------- sampled eval


def summarize_samples(rows: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Sampled accuracy, unbiased pass@k and maj@k (majority of a problem's first k samples), averaged over
    problems; backtrack rates of right and wrong samples; corrected and broken counts (evaluation's sense).

    rows are evaluation.score rows with "id" and "sample" (0..n-1), every problem with the same n.
    """
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_problem[row["id"]].append(row)
    groups = [sorted(g, key=lambda r: r["sample"]) for g in by_problem.values()]
    right = [r for r in rows if r["correct"]]
    wrong = [r for r in rows if not r["correct"]]
    metrics: dict[str, Any] = {"samples": len(rows), "problems": len(groups),
                               "accuracy": share(len(right), len(rows))}
    for k in ks:
        values = [pass_at_k(len(g), sum(r["correct"] for r in g), k) for g in groups]
        metrics[f"pass@{k}"] = _mean(values)
    for k in ks:
        hits = [majority([r["answer"] for r in g[:k]]) == normalize_answer(g[0]["gold"]) for g in groups]
        metrics[f"maj@{k}"] = share(sum(hits), len(groups))
    metrics.update(
        backtrack_rate_right=share(sum(r["backtracks"] > 0 for r in right), len(right)),
        backtrack_rate_wrong=share(sum(r["backtracks"] > 0 for r in wrong), len(wrong)),
        corrected=sum(r["corrected"] for r in rows),
        broken=sum(r["broken"] for r in rows),
    )
    return metrics


# --------------------------------------------------------------------------- transitions between models


def transitions(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the greedy outcome of each problem moved from one model to the next (by id): counts, and the
    share of the first model's wrong answers the second gets right (and of its right ones it gets wrong)."""
    first = {r["id"]: r["correct"] for r in before}
    pairs = [(first[r["id"]], r["correct"]) for r in after if r["id"] in first]
    was_wrong = sum(1 for a, _ in pairs if not a)
    was_right = len(pairs) - was_wrong
    fixed = sum(1 for a, b in pairs if not a and b)
    lost = sum(1 for a, b in pairs if a and not b)
    return {
        "examples": len(pairs),
        "wrong_to_right": fixed,
        "right_to_wrong": lost,
        "right_to_right": was_right - lost,
        "wrong_to_wrong": was_wrong - fixed,
        "wrong_to_right_rate": share(fixed, was_wrong),
        "right_to_wrong_rate": share(lost, was_right),
    }


def transitions_between(predictions: dict[str, Sequence[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """transitions() for each model and the next in eval order, keyed "before->after" (e.g. "sft->grpo")."""
    return {f"{a}->{b}": transitions(predictions[a], predictions[b]) for a, b in itertools.pairwise(predictions)}


# --------------------------------------------------------------------------- one model's diagnostics


@dataclass
class Diagnosis:
    """One model's diagnostic metrics (nested blocks for metrics/eval.json) and per-example rows."""

    metrics: dict[str, dict[str, Any]]
    probe_rows: list[dict[str, Any]]
    sample_rows: list[dict[str, Any]]


def enabled(p: EvalParams) -> bool:
    return p.probe.enabled or p.own_errors.enabled or p.sampled.enabled


def diagnose(model: Any, tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, p: EvalParams,
             score: Scorer, unit: str = "token") -> Diagnosis:
    """The probe, own errors and the sampled eval for one loaded model, as eval.probe / own_errors / sampled
    switch them. A model without a backtrack token (backtrack_id -1) has nothing to probe: sampled only.
    unit is the model's retraction unit (the probe's retraction follows it; `score` must resolve by it)."""
    from llmhalluc.training import seed_everything

    metrics: dict[str, dict[str, Any]] = {}
    probe_rows: list[dict[str, Any]] = []
    sample_rows: list[dict[str, Any]] = []
    has_token = backtrack_id >= 0

    def prompt(record: Record) -> list[int]:
        return evaluation.prompt_ids(tokenizer, record.prompt)

    if p.probe.enabled and has_token:
        items = probe_items(tokenizer, records[:p.probe.problems], backtrack_id=backtrack_id, seed=p.seed, unit=unit,
                            positions=p.probe.positions)
        probe_rows = run_probe(model, tokenizer, items, backtrack_id=backtrack_id, batch_size=p.batch_size,
                               max_new_tokens=p.max_new_tokens, score=score)
        metrics["probe"] = summarize_probe(probe_rows)

    if p.sampled.enabled or (p.own_errors.enabled and has_token):
        subset = list(records[:p.sampled.problems])
        prompts = [prompt(r) for r in subset for _ in range(p.sampled.n)]
        sampling = evaluation.Sampling(max_new_tokens=p.max_new_tokens, do_sample=True, temperature=p.temperature,
                                       top_p=p.top_p, seed=p.seed)
        seed_everything(p.seed)  # per model, like the greedy eval: samples do not depend on earlier models
        samples = evaluation.generate_transformers(model, tokenizer, prompts, batch_size=p.batch_size,
                                                   sampling=sampling)
        owners = [r for r in subset for _ in range(p.sampled.n)]
        sample_rows = [{"id": r.id, "sample": index % p.sampled.n, **score(ids, r)}
                       for index, (r, ids) in enumerate(zip(owners, samples, strict=True))]
        if p.sampled.enabled:
            metrics["sampled"] = summarize_samples(sample_rows, p.sampled.k)
        if p.own_errors.enabled and has_token:
            steps = own_error_rows(model, tokenizer, prompts, samples, backtrack_id=backtrack_id,
                                   batch_size=p.batch_size, unit=unit)
            for row, found in zip(sample_rows, steps, strict=True):
                row["steps"] = found
            metrics["own_errors"] = summarize_own_errors(steps)
    return Diagnosis(metrics=metrics, probe_rows=probe_rows, sample_rows=sample_rows)
