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

The *probe* measures these on gold solutions with one step replaced by a wrong step
of the kind the model was trained on (or any kind eval.probe.kinds names: the ladder
of llmhalluc.datasets.mistakes, made by prepare's own code), with correction and
false positives also under the rollback decoder (llmhalluc.rollback). *Own errors*
measure detection on the model's own sampled solutions, whose `a op b = c` steps can
be recomputed (`arithmetic.check_step`). The *sampled* eval (pass@k, maj@k) and
*transitions* between models complete the picture.

The package follows those seams: scores (AUROC, pass@k, majority), teacher_forcing
(one forward pass reads probabilities, argmax chains, surprisal and decision states),
probe, own_errors, sampled (with the transitions); `diagnose` runs them for one model.

Probabilities are teacher-forced: one batched, left-padded forward pass gives
P(backtrack) at every decision point of a sequence, and the argmax chain of the
same pass stands for greedy counting (greedy continues with the argmax, so the
chain is what greedy would emit). Only repair, correction and false positives
generate, through evaluation.generate_transformers like the main eval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhalluc import evaluation
from llmhalluc.datasets.records import Record
from llmhalluc.diagnostics.own_errors import own_error_rows, split_steps, step_ends, summarize_own_errors
from llmhalluc.diagnostics.probe import (
    ProbeItem,
    Reachability,
    Rollback,
    Scorer,
    probe_item,
    probe_items,
    probe_positions,
    reachability,
    run_probe,
    summarize_probe,
    trained_kind,
)
from llmhalluc.diagnostics.sampled import summarize_samples, transitions, transitions_between
from llmhalluc.diagnostics.scores import auroc, majority, pass_at_k
from llmhalluc.diagnostics.teacher_forcing import (
    Readings,
    cross_fitted_scores,
    next_token_stats,
    pad_id,
    read_sequences,
)

if TYPE_CHECKING:
    from llmhalluc.params.sections import EvalParams

__all__ = [
    "Diagnosis",
    "ProbeItem",
    "Reachability",
    "Readings",
    "Rollback",
    "Scorer",
    "auroc",
    "cross_fitted_scores",
    "diagnose",
    "enabled",
    "majority",
    "next_token_stats",
    "own_error_rows",
    "pad_id",
    "pass_at_k",
    "probe_item",
    "probe_items",
    "probe_kinds",
    "probe_positions",
    "reachability",
    "read_sequences",
    "run_probe",
    "split_steps",
    "step_ends",
    "summarize_own_errors",
    "summarize_probe",
    "summarize_samples",
    "trained_kind",
    "transitions",
    "transitions_between",
]


@dataclass
class Diagnosis:
    """One model's diagnostic metrics (nested blocks for metrics/eval.json) and per-example rows."""

    metrics: dict[str, dict[str, Any]]
    probe_rows: list[dict[str, Any]]
    sample_rows: list[dict[str, Any]]
    #: the rollback decoder's scored completions (eval.rollback), beside the greedy predictions
    rollback_rows: list[dict[str, Any]] = field(default_factory=list)


def probe_kinds(asked: Sequence[str], trained: str) -> list[str]:
    """The kinds eval.probe.kinds names, `trained` read as the model's own kind, each once, in order."""
    return list(dict.fromkeys(trained if kind == "trained" else kind for kind in asked))


def enabled(p: EvalParams) -> bool:
    return p.probe.enabled or p.own_errors.enabled or p.sampled.enabled


def diagnose(model: Any, tokenizer: Any, records: Sequence[Record], *, backtrack_id: int, p: EvalParams,
             score: Scorer, unit: str = "token", trained: str = "plausible",
             log: Callable[[str], None] | None = None) -> Diagnosis:
    """The probe, own errors and the sampled eval for one loaded model, as eval.probe / own_errors / sampled
    switch them. A model without a backtrack token (backtrack_id -1) has nothing to probe: sampled only.
    unit is the model's retraction unit (the probe's retraction follows it; `score` must resolve by it);
    trained the kind of wrong step it was trained on (`trained_kind`), what eval.probe.kinds' `trained` names.
    The probe's metrics are one block per kind: metrics["probe"][kind]. log, if given, hears each part as
    it starts, with its size (eval's progress)."""
    say = log or (lambda message: None)
    from llmhalluc.backtrack.retraction import retraction_for
    from llmhalluc.rng import seed_everything

    metrics: dict[str, dict[str, Any]] = {}
    probe_rows: list[dict[str, Any]] = []
    sample_rows: list[dict[str, Any]] = []
    has_token = backtrack_id >= 0

    def prompt(record: Record) -> list[int]:
        return evaluation.prompt_ids(tokenizer, record.prompt)

    if p.probe.enabled and has_token:
        rollback = Rollback(retraction_for(tokenizer, backtrack_id, unit=unit), p.rollback.max_retries) \
            if p.rollback.enabled else None
        metrics["probe"] = {}
        for kind in probe_kinds(p.probe.kinds, trained):
            items = probe_items(tokenizer, records[:p.probe.problems], backtrack_id=backtrack_id, seed=p.seed,
                                unit=unit, positions=p.probe.positions, kind=kind)
            say(f"probe {kind}: {len(items)} wrong steps in {len(records[:p.probe.problems])} problems")
            rows = run_probe(model, tokenizer, items, backtrack_id=backtrack_id, batch_size=p.batch_size,
                             max_new_tokens=p.max_new_tokens, score=score, rollback=rollback)
            metrics["probe"][kind] = summarize_probe(rows)
            probe_rows += rows

    if p.sampled.enabled or (p.own_errors.enabled and has_token):
        subset = list(records[:p.sampled.problems])
        prompts = [prompt(r) for r in subset for _ in range(p.sampled.n)]
        sampling = evaluation.Sampling(max_new_tokens=p.max_new_tokens, do_sample=True, temperature=p.temperature,
                                       top_p=p.top_p, seed=p.seed)
        say(f"sampled: {len(subset)} problems x {p.sampled.n} samples")
        seed_everything(p.seed)  # per model, like the greedy eval: samples do not depend on earlier models
        samples = evaluation.generate_transformers(model, tokenizer, prompts, batch_size=p.batch_size,
                                                   sampling=sampling, group_prefix=[len(s) for s in prompts])
        owners = [r for r in subset for _ in range(p.sampled.n)]
        sample_rows = [{"id": r.id, "sample": index % p.sampled.n, **score(ids, r)}
                       for index, (r, ids) in enumerate(zip(owners, samples, strict=True))]
        if p.sampled.enabled:
            metrics["sampled"] = summarize_samples(sample_rows, p.sampled.k)
        if p.own_errors.enabled and has_token:
            say(f"own errors: the steps of {len(samples)} samples")
            steps = own_error_rows(model, tokenizer, prompts, samples, backtrack_id=backtrack_id,
                                   batch_size=p.batch_size, unit=unit)
            for row, found in zip(sample_rows, steps, strict=True):
                row["steps"] = found
            metrics["own_errors"] = summarize_own_errors(steps)
    return Diagnosis(metrics=metrics, probe_rows=probe_rows, sample_rows=sample_rows)
