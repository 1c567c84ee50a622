"""The sampled eval (accuracy, pass@k, maj@k over samples) and the transitions between models' greedy outcomes."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llmhalluc.answers import normalize_answer
from llmhalluc.diagnostics.scores import majority, mean, pass_at_k
from llmhalluc.evaluation import share


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
        metrics[f"pass@{k}"] = mean(values)
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
