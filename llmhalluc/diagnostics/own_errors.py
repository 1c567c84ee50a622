"""Own errors: P(backtrack) after the model's own wrong vs right steps, on its sampled solutions.

A step counts when its `a op b = c` can be recomputed (`arithmetic.check_step`); the
solution is read as the model's retraction unit resolves it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llmhalluc.backtrack.retraction import retraction_for
from llmhalluc.datasets.arithmetic import check_step
from llmhalluc.diagnostics.scores import auroc, mean
from llmhalluc.diagnostics.teacher_forcing import next_token_stats, pad_id
from llmhalluc.evaluation import share

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
                             token_id=backtrack_id, batch_size=batch_size, pad_id=pad_id(model, tokenizer),
                             group_prefix=[len(p) for p in prompts])  # a problem's samples share its prompt
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
        "p_backtrack_after_wrong": mean([s["p_backtrack"] for s in wrong]),
        "p_backtrack_after_right": mean([s["p_backtrack"] for s in right]),
        "auroc": auroc([s["p_backtrack"] for s in wrong], [s["p_backtrack"] for s in right]),
        "retracted_wrong": share(sum(s["retracted"] for s in wrong), len(wrong)),
        "retracted_right": share(sum(s["retracted"] for s in right), len(right)),
    }
