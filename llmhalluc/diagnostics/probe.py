"""The injected-error probe: gold solutions with one step replaced by a wrong one, and what the model does next.

Detection, counting, repair, correction and false positives are read on the same items
(`ProbeItem`); probabilities are teacher-forced (teacher_forcing), continuations greedy
through evaluation.generate_transformers like the main eval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmhalluc import evaluation
from llmhalluc.backtrack.retraction import render_error
from llmhalluc.datasets import mistakes
from llmhalluc.datasets.records import Record
from llmhalluc.datasets.step_check import check_value_span
from llmhalluc.diagnostics.scores import auroc, mean
from llmhalluc.diagnostics.teacher_forcing import cross_fitted_scores, next_token_stats, pad_id, read_sequences
from llmhalluc.evaluation import share
from llmhalluc.lineage import Lineage

#: score(assistant ids, record) -> evaluation.score's row for that completion.
Scorer = Callable[[Sequence[int], Record], dict[str, Any]]


@dataclass(frozen=True)
class ProbeItem:
    """One probed position: a gold prefix, then the gold step (right) or a wrong step of one kind (wrong).

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
    kind: str = "plausible"
    #: (start, stop) of the wrong step's check value within `wrong` (prepare.check_steps), where it tokenizes alone
    check_value: tuple[int, int] | None = None


def probe_item(record: Record, position: int, *, prompt: list[int], tokenize: Callable[[str], list[int]],
               backtrack_id: int, seed: int, unit: str = "token", kind: str = "plausible") -> ProbeItem | None:
    """The probe's one statement of the backtrack unit: what the wrong prefix, its exact retraction and the
    repair target are. None where the kind has no mistake to make there (a step without a number to nudge).

    As train_sft encodes (any unit): the steps are
    tokenized segment by segment as SFT saw them ("" before the first, " " before
    the others), the error is prepare's mistake of that kind made from the gold step
    (llmhalluc.datasets.mistakes; a checked step gets a check of its own operands), and its exact
    retraction follows the model's unit (`Retraction.render_error`): one backtrack per
    error token for `token`, one backtrack for `step` and `retry` (the wrong step stays
    before it; the unit's resolution drops it, so the repair target is the same).
    The mistake is seeded by (seed, record, position), so every
    model is probed with the same errors.
    """
    steps = record.steps
    right_step = steps[position]
    wrong_step = mistakes.wrong_step(kind, right_step, random.Random(f"{seed}:{record.id}:{position}"))
    if wrong_step is None or wrong_step == right_step:
        return None
    separator = " " if position else ""
    context = [t for index, step in enumerate(steps[:position]) for t in tokenize((" " if index else "") + step)]
    wrong = tokenize(separator + wrong_step)
    return ProbeItem(record=record, position=position, prompt=prompt, context=context,
                     right=tokenize(separator + right_step), wrong=wrong,
                     retraction=render_error(unit, wrong, backtrack_id),
                     right_step=right_step, wrong_step=wrong_step, kind=kind,
                     check_value=_check_value(separator, wrong_step, wrong, tokenize))


def _check_value(separator: str, step: str, ids: list[int], tokenize: Callable[[str], list[int]]
                 ) -> tuple[int, int] | None:
    """Where the check's value lies in the step's ids, if the step has a check and its text before and through
    the value tokenizes as a prefix of the whole (a merge across the value's edge leaves it unread)."""
    span = check_value_span(step)
    if span is None:
        return None
    before = tokenize(separator + step[:span[0]].rstrip())
    through = tokenize(separator + step[:span[1]])
    if ids[:len(before)] != before or ids[:len(through)] != through or len(through) <= len(before):
        return None
    return len(before), len(through)


def probe_items(tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, seed: int, unit: str,
                positions: list[int] | str = "all", kind: str = "plausible") -> list[ProbeItem]:
    """The probe's items of one kind for records at the given step positions (probe_positions), tokenized as
    train_sft encodes steps, each prompt as the chat template opens the assistant turn (evaluation.prompt_ids)."""

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    items = []
    for r in records:
        prompt = evaluation.prompt_ids(tokenizer, r.prompt)
        items += [item for position in probe_positions(len(r.steps), positions)
                  if (item := probe_item(r, position, prompt=prompt, tokenize=tokenize, backtrack_id=backtrack_id,
                                         seed=seed, unit=unit, kind=kind)) is not None]
    return items


def trained_kind(lineage: Lineage | dict[str, Any] | None) -> str:
    """The kind of wrong step a model was trained on (its lineage's `mistakes`, as train_sft copied it from
    prepare's meta.json), else plausible (a model without lineage, or trained before the ladder)."""
    return Lineage.of(lineage).nearest("mistakes", "kind") or "plausible"


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


def sharded(trainer: Any) -> bool:
    """Whether the trainer's parameters are split over processes (DeepSpeed ZeRO-3, FSDP): no plain forward pass."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled()))


class Reachability:
    """sft.backtrack.report_problems: the reach of the token on the first records as prepared, as initialised
    (`before`, given the first pass's trainer before it trains) and after training (`after`). Off (false) with no
    records, or once a trainer's parameters are sharded (ZeRO-3 / FSDP: no plain forward pass)."""

    def __init__(self, tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, unit: str, seed: int,
                 batch_size: int) -> None:
        self.tokenizer, self.records = tokenizer, list(records)
        self.options = {"backtrack_id": backtrack_id, "unit": unit, "seed": seed, "batch_size": batch_size}
        self.measured: dict[str, Any] = {}  # before / after, as lineage and the metrics summary record them
        self.on = bool(self.records)

    def __bool__(self) -> bool:
        return self.on

    def before(self, trainer: Any) -> None:
        from llmhalluc.launcher import print_once

        if not self.on or "before" in self.measured:
            return
        if sharded(trainer):
            self.on = False
            print_once("note: sft.backtrack.report_problems: P(backtrack) is not measured under ZeRO-3 / FSDP")
            return
        self.measured["before"] = reachability(trainer.model, self.tokenizer, self.records, **self.options)

    def after(self, model: Any) -> dict[str, Any]:
        self.measured["after"] = reachability(model, self.tokenizer, self.records, **self.options)
        return self.measured["after"]

    def record(self) -> dict[str, Any]:
        """{"backtrack_reachability": {...}} for the lineage and the metrics summary while on, else nothing."""
        return {"backtrack_reachability": self.measured} if self.on else {}


def probe_positions(step_count: int, positions: list[int] | str) -> list[int]:
    """The step indexes a record is probed at: all, or each listed index (negative from the end) that exists."""
    if positions == "all":
        return list(range(step_count))
    chosen = [p if p >= 0 else step_count + p for p in positions]
    return sorted({p for p in chosen if 0 <= p < step_count})


def run_probe(model: Any, tokenizer: Any, items: Sequence[ProbeItem], *, backtrack_id: int, batch_size: int,
              max_new_tokens: int, score: Scorer, rollback: Rollback | None = None) -> list[dict[str, Any]]:
    """One row per item: detection probabilities and the counting chain (teacher-forced), then repair,
    correction and false positive (greedy continuations, all three in one batched generation); with
    rollback, correction and false positive again under the rollback decoder (llmhalluc.rollback)."""
    import torch

    if not items:
        return []
    pad = pad_id(model, tokenizer)
    wrong_seqs = [i.prompt + i.context + i.wrong + i.retraction for i in items]
    right_seqs = [i.prompt + i.context + i.right for i in items]
    retracting = [[len(i.prompt + i.context + i.wrong) + m for m in range(len(i.retraction) + 1)] for i in items]
    checking = [[len(i.prompt + i.context) + k for k in range(*i.check_value)] if i.check_value else []
                for i in items]
    # One teacher-forced pass: P(backtrack) and the counting chain, the check's value as the model would write it,
    # and each step's surprisal and decision state.
    steps = [(len(i.prompt + i.context), len(i.prompt + i.context + i.wrong)) for i in items] + \
        [(len(i.prompt + i.context), len(s)) for i, s in zip(items, right_seqs, strict=True)]
    read = read_sequences(model, wrong_seqs + right_seqs,
                          [r + c for r, c in zip(retracting, checking, strict=True)] + [[len(s)] for s in right_seqs],
                          token_id=backtrack_id, batch_size=batch_size, pad_id=pad, spans=steps,
                          group_prefix=[len(i.prompt + i.context) for i in items] * 2)
    wrong_stats, right_stats = read.stats[:len(items)], read.stats[len(items):]
    surprise = read.surprisal
    states = torch.stack(read.states)
    hidden = cross_fitted_scores(states[:len(items)], states[len(items):]) or ([None] * len(items),) * 2

    repair = [i.prompt + i.context + i.wrong + i.retraction for i in items]
    correction = [i.prompt + i.context + i.wrong for i in items]
    false_positive = right_seqs
    resolved_prefix = [i.prompt + i.context for i in items]  # the retraction applied to the context itself
    sampling = evaluation.Sampling(max_new_tokens=max_new_tokens)
    # An item's four continuations share its problem and the steps before the error: read once.
    generated = evaluation.generate_transformers(model, tokenizer,
                                                 repair + correction + false_positive + resolved_prefix,
                                                 batch_size=batch_size, sampling=sampling,
                                                 group_prefix=[len(s) for s in resolved_prefix] * 4)
    n = len(items)
    # Under the rollback decoder, from the same two prefixes; the greedy continuations above are its first round.
    rolled = rollback.decode(model, tokenizer, [i.prompt for i in items] * 2,
                             [i.context + i.wrong for i in items] + [i.context + i.right for i in items],
                             max_new_tokens=max_new_tokens, batch_size=batch_size,
                             greedy=generated[n:3 * n]) if rollback else None
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
        row = {
            "id": item.record.id, "kind": item.kind, "position": item.position, "right_step": item.right_step,
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
            # With the wrong result written before it, the check's value as greedy writes it is the right one
            # (the model recomputes) rather than a copy of the result (None: no check).
            "check_recomputed": all(argmax == wrong_seqs[index][end] for (_, argmax), end in zip(
                wrong_stats[index][len(retracting[index]):], checking[index], strict=True))
            if checking[index] else None,
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
        }
        if rolled is not None:
            wrong_run, right_run = rolled[index], rolled[n + index]
            by_rollback, kept_rollback = score(wrong_run.ids, item.record), score(right_run.ids, item.record)
            row.update({"correction_rollback_backtracked": by_rollback["backtracks"] > 0,
                        "correction_rollback_right": by_rollback["correct"],
                        "false_positive_rollback": kept_rollback["backtracks"] > 0,
                        "correction_rollback_retries": wrong_run.retries, "correction_rollback": by_rollback["raw"]})
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Rollback:
    """The rollback decoder as the probe runs it: the model's retraction and the retry bound (eval.rollback)."""

    retraction: Any
    max_retries: int

    def decode(self, model: Any, tokenizer: Any, prompts: list[list[int]], prefixes: list[list[int]], *,
               max_new_tokens: int, batch_size: int, greedy: list[list[int]] | None = None) -> list[Any]:
        from llmhalluc.rollback import generate_rollback

        return generate_rollback(model, tokenizer, prompts, prefixes=prefixes, retraction=self.retraction,
                                 max_new_tokens=max_new_tokens, max_retries=self.max_retries,
                                 batch_size=batch_size, greedy=greedy)


def _writes_step(resolved: str, expected: str) -> bool:
    """Whether the resolved text is the expected text (context + the right step), then a break or nothing."""
    rest = resolved[len(expected):]
    return resolved.startswith(expected) and (not rest or rest[0].isspace())


def summarize_probe(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The probe's metrics: detection means and AUROC (wrong steps are the positives), then shares of items."""
    wrong = [r["p_backtrack_wrong"] for r in rows]
    right = [r["p_backtrack_right"] for r in rows]
    n = len(rows)
    metrics = {
        "items": n,
        "detection_p_wrong": mean(wrong),
        "detection_p_right": mean(right),
        "detection_auroc": auroc(wrong, right),
        "detection_surprise_auroc": auroc([r["surprisal_wrong"] for r in rows], [r["surprisal_right"] for r in rows]),
        "detection_hidden_auroc": auroc([r["hidden_score_wrong"] for r in rows if r["hidden_score_wrong"] is not None],
                                        [r["hidden_score_right"] for r in rows if r["hidden_score_right"] is not None]),
        **{key: share(sum(r[key] for r in rows), n) for key in (
            "counting_exact", "repair_step", "repair_step_resolved", "repair_answer", "correction_backtracked",
            "correction_right", "false_positive")},
    }
    checked = [r["check_recomputed"] for r in rows if r["check_recomputed"] is not None]
    if checked:
        metrics["check_recomputed"] = share(sum(checked), len(checked))
    if rows and "correction_rollback_right" in rows[0]:
        metrics.update({key: share(sum(r[key] for r in rows), n) for key in (
            "correction_rollback_backtracked", "correction_rollback_right", "false_positive_rollback")})
    return metrics
