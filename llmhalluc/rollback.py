"""Rollback decoding: greedy decoding that acts on a backtrack instead of leaving it in the text.

Why: under plain greedy decoding a retracted step stays in the context the model goes on
from, and a model parrots it (measured here: after an exact retraction the right step follows
0.06-0.22 of the time with the retracted text in context, 0.66-0.82 with it removed; Wu et al.
2025 report the same for larger models). And after its *own* greedy mistake, rolling back alone
regenerates the same mistake: the context is the one that produced it. So this decoder

1. decodes greedily until the model has emitted a backtrack and finished its run of backtracks
   (the token after the run was written in the polluted context; it is dropped);
2. applies the run with the model's retraction unit (`backtrack.retraction.Retraction`): the retracted
   tokens leave the context, exactly as resolution removes them from the text;
3. excludes the retracted continuation E at that point: where greedy decoding from the rolled-back
   context would write E again (every token of E is its argmax, as for the model's own mistake),
   the token of E the model was least sure of (smallest margin over its runner-up) is banned in
   exactly that context, so the new continuation leaves E there and nowhere earlier; where greedy
   would leave E by itself (an injected mistake), nothing is banned;
4. repeats, at most `max_retries` rollbacks per completion; after them the backtrack token is
   banned, so the completion ends as greedy decoding ends it.

A completion in which the model never backtracks is decoded exactly as plain greedy decoding
(evaluation.generate_transformers) decodes it: same batches, same stopping, same ids.

The trajectory kept for scoring is the given prefix, then every generated token but the dropped
ones, backtracks included: resolving it by the unit gives the final context, so eval scores a
rollback completion with the same `evaluation.score` as any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmhalluc.backtrack.retraction import Retraction
from llmhalluc.decoding import left_padded
from llmhalluc.evaluation import stop_ids


@dataclass
class Decoded:
    """One rollback completion."""

    #: the trajectory after the prompt: given prefix + generated tokens (backtracks included, dropped ones not)
    ids: list[int]
    #: rollbacks made (<= max_retries)
    retries: int
    #: tokens the model generated, the dropped and the retracted ones included (what decoding cost); like greedy's
    #: `length`, the end of sequence is not counted, so a model that never backtracks costs exactly greedy's
    generated: int


@dataclass
class _Row:
    """The decoding state of one completion between rounds."""

    prompt: list[int]
    kept: list[int]  # the context after the prompt, as it stands (rollbacks applied)
    trajectory: list[int]
    limit: int  # the longest the context may grow: the given prefix + max_new_tokens
    retries: int = 0
    generated: int = 0
    done: bool = False
    #: context after the prompt (as a tuple) -> tokens banned there; keyed by length first for a cheap test
    bans: dict[int, dict[tuple[int, ...], set[int]]] = field(default_factory=dict)

    def banned(self, context: Sequence[int]) -> set[int]:
        return self.bans.get(len(context), {}).get(tuple(context), set())

    def ban(self, context: Sequence[int], token: int) -> None:
        self.bans.setdefault(len(context), {}).setdefault(tuple(context), set()).add(token)


def generate_rollback(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, retraction: Retraction,
                      max_new_tokens: int, max_retries: int, batch_size: int,
                      prefixes: Sequence[list[int]] | None = None,
                      greedy: Sequence[list[int]] | None = None) -> list[Decoded]:
    """Rollback completions of each prompt (in input order), greedy, batch by batch with left padding.

    prefixes: assistant tokens already written after each prompt (the probe's gold context and injected
    step), which a backtrack may retract. The context never grows more than max_new_tokens past its
    prefix (what plain decoding generates at most); with the retries bounded, so is the work.

    greedy: plain greedy completions of the same prompts (and prefixes) with the same max_new_tokens,
    as eval has already made them. Up to the token after its first run of backtracks a rollback
    completion *is* the greedy one, so that part is read from them instead of generated again: a
    completion without a backtrack costs nothing more, and only the ones that backtracked decode on.
    (A greedy completion that ends inside its run of backtracks at the budget is decoded again: the
    rollback decoder lets a run finish.)
    """
    prefixes = prefixes or [[] for _ in prompts]
    rows = [_Row(prompt=list(p), kept=list(f), trajectory=list(f), limit=len(f) + max_new_tokens)
            for p, f in zip(prompts, prefixes, strict=True)]
    stops = stop_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    if greedy is not None:
        rolled = [(row, excluded) for row, new in zip(rows, greedy, strict=True)
                  if not (new and new[-1] == retraction.backtrack_id and len(new) >= max_new_tokens)
                  and (excluded := _apply(row, list(new), retraction, stops)) is not None]
        _exclude(model, rolled, pad_id, batch_size)
    while pending := [i for i, r in enumerate(rows) if not r.done]:
        # Longest first, as generate_transformers batches: the first round is exactly its batches.
        pending.sort(key=lambda i: -len(rows[i].prompt) - len(rows[i].kept))
        rolled: list[tuple[_Row, list[int]]] = []
        for start in range(0, len(pending), batch_size):
            chunk = [rows[i] for i in pending[start:start + batch_size]]
            for row, new in zip(chunk, _round(model, chunk, retraction.backtrack_id, stops, pad_id, max_retries),
                                strict=True):
                if (excluded := _apply(row, new, retraction, stops)) is not None:
                    rolled.append((row, excluded))
        _exclude(model, rolled, pad_id, batch_size)
    return [Decoded(ids=r.trajectory, retries=r.retries, generated=r.generated) for r in rows]


def _round(model: Any, chunk: list[_Row], backtrack_id: int, stops: set[int], pad_id: int,
           max_retries: int) -> list[list[int]]:
    """One greedy decoding of a batch of rows (decoding.decode_batch, as greedy eval decodes a batch): each
    row's new tokens, up to where it stopped."""
    from llmhalluc.decoding import decode_batch

    sequences = [r.prompt + r.kept for r in chunk]
    width = max(len(s) for s in sequences)
    watch = _Watch(chunk, backtrack_id, width)
    longest = max(r.limit - len(r.kept) for r in chunk)  # >= 1: a row at its limit is done
    # Room for the longest row's budget, a run of backtracks as long and the dropped token; the watch stops rows.
    generated = decode_batch(model, sequences, stops=stops, pad_id=pad_id, max_new_tokens=2 * longest + 1,
                             logits_processor=_Bans(chunk, backtrack_id, width, max_retries), stopping_criteria=watch)
    return [generated[index].tolist()[:stop] for index, stop in enumerate(watch.stopped_at)]


def _apply(row: _Row, new: list[int], retraction: Retraction, stops: set[int]) -> list[int] | None:
    """Fold one round's tokens into the row: kept tokens, then a run of backtracks applied (the dropped token
    after it discarded). Returns the retracted continuation when the row rolled back, else None."""
    end = next((i for i, t in enumerate(new) if t in stops), None)
    first = next((i for i, t in enumerate(new) if t == retraction.backtrack_id), None)
    if first is None or (end is not None and end < first):
        cut = new[:end] if end is not None else new
        row.generated += len(cut)  # the end of sequence is not counted, as greedy's lengths do not count it
        row.kept += cut
        row.trajectory += cut
        row.done = True  # an end of sequence, or the budget
        return None
    run_end = first
    while run_end < len(new) and new[run_end] == retraction.backtrack_id:
        run_end += 1
    row.generated += min(run_end + 1, len(new))  # the dropped token after the run counts as work done
    row.kept += new[:first]
    row.trajectory += new[:run_end]
    excluded: list[int] = []
    for _ in range(run_end - first):
        before = list(row.kept)
        removed = retraction.retract(row.kept)
        excluded = before[len(before) - removed:] + excluded if removed else excluded
    row.retries += 1
    row.done = len(row.kept) >= row.limit
    return excluded if excluded else None


def _exclude(model: Any, rolled: list[tuple[_Row, list[int]]], pad_id: int, batch_size: int) -> None:
    """Ban, for each row that rolled back, the token where greedy decoding would write its retracted
    continuation again with the least margin (nothing where greedy would leave it by itself)."""
    import torch

    device = next(model.parameters()).device
    for start in range(0, len(rolled), batch_size):
        chunk = rolled[start:start + batch_size]
        sequences = [r.prompt + r.kept + e for r, e in chunk]
        input_ids, attention = left_padded(sequences, pad_id)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        width = input_ids.shape[1]
        # Where each row's retracted continuation starts; logits only from the first position that predicts one.
        starts = [width - len(e) for _, e in chunk]
        first = min(starts) - 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                           position_ids=positions.to(device), logits_to_keep=width - first).logits.float()
        for row, ((r, excluded), begin) in enumerate(zip(chunk, starts, strict=True)):
            margins = []
            for j, token in enumerate(excluded):
                scores = logits[row, begin + j - 1 - first].clone()
                for banned in r.banned(r.kept + excluded[:j]):
                    scores[banned] = float("-inf")
                if int(scores.argmax()) != token:
                    break  # greedy leaves the retracted continuation here by itself
                scores[token] = float("-inf")
                margins.append(float(logits[row, begin + j - 1 - first, token] - scores.max()))
            else:
                j = min(range(len(margins)), key=margins.__getitem__)
                r.ban(r.kept + excluded[:j], excluded[j])


class _Watch:
    """Stopping criterion per row: after a backtrack run ends (the token after it is the dropped one), or
    when the resolved context reaches the budget with no backtrack pending, or when a run has retracted
    everything there is."""

    def __init__(self, chunk: list[_Row], backtrack_id: int, width: int) -> None:
        self.chunk, self.backtrack_id, self.width = chunk, backtrack_id, width
        self.stopped_at: list[int | None] = [None] * len(chunk)
        self.before = [0] * len(chunk)  # new tokens before the first backtrack
        self.run = [0] * len(chunk)  # backtracks in the current run

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        count = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        done = []
        for index, row in enumerate(self.chunk):
            if self.stopped_at[index] is None:
                if last[index] == self.backtrack_id:
                    self.run[index] += 1
                    if self.run[index] > len(row.kept) + self.before[index]:
                        self.stopped_at[index] = count
                elif self.run[index]:
                    self.stopped_at[index] = count
                else:
                    self.before[index] += 1
                    if len(row.kept) + self.before[index] >= row.limit:
                        self.stopped_at[index] = count
            done.append(self.stopped_at[index] is not None)
        return torch.tensor(done, device=input_ids.device)


class _Bans:
    """Logits processor: the row's bans in its current context, and the backtrack token once its retries
    are spent."""

    def __init__(self, chunk: list[_Row], backtrack_id: int, width: int, max_retries: int) -> None:
        self.chunk, self.backtrack_id, self.width, self.max_retries = chunk, backtrack_id, width, max_retries

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for index, row in enumerate(self.chunk):
            if row.retries >= self.max_retries:
                scores[index, self.backtrack_id] = float("-inf")
            if not row.bans:
                continue
            length = len(row.kept) + input_ids.shape[1] - self.width
            if length in row.bans:
                context = row.kept + input_ids[index, self.width:].tolist()
                for token in row.banned(context):
                    scores[index, token] = float("-inf")
        return scores


def summarize(rows: Sequence[dict[str, Any]], greedy: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rollback decoder's metrics beside plain greedy's on the same problems (rows matched by id): accuracy,
    the share of completions that backtracked, retries and generated tokens per problem, and the problems it
    turned from wrong to right (`fixed`) and from right to wrong (`broken`) against greedy."""
    from llmhalluc.evaluation import share

    first = {r["id"]: r["correct"] for r in greedy}
    n = len(rows)
    return {
        "accuracy": share(sum(r["correct"] for r in rows), n),
        "backtrack_rate": share(sum(r["backtracks"] > 0 for r in rows), n),
        "retries_per_problem": share(sum(r["retries"] for r in rows), n),
        "tokens_per_problem": share(sum(r["generated"] for r in rows), n),
        "fixed": sum(1 for r in rows if r["correct"] and not first.get(r["id"], True)),
        "broken": sum(1 for r in rows if not r["correct"] and first.get(r["id"], False)),
    }
