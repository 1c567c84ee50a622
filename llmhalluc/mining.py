"""Retry data from the model's own mistakes: sample a partly trained model, keep the first step it got wrong.

Prepare's synthetic errors are near misses the model may never make. Here the errors are the
model's: train_sft (sft.own_errors) samples completions of SFT prompts from its first-pass model
and, for each record, takes the first step that is *certifiably* wrong: it differs from the gold
step at the same place, after gold steps only, and its arithmetic is recomputed and fails
(`arithmetic.check_step` False), or it is an answer sentence with a wrong answer after all the gold
steps. A step that differs but is right, or cannot be recomputed, certifies nothing (None). The
wrong step's prefix is the gold prefix, so "gold steps[:i] + own wrong step + backtrack(s) + gold
steps[i:] + answer" shows the model exactly the context it erred in.

`own_errors_pass` is train_sft's first pass around it: after_steps steps on the records without
errors, then mining (or, with sft.own_errors.source: synthetic, near misses as prepare makes them,
the control); the same weights then train the remaining steps on the mix (`OwnErrors.second`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmhalluc.answers import DEFAULT_PATTERN, normalize_answer
from llmhalluc.backtrack.retraction import retraction_for
from llmhalluc.datasets.arithmetic import check_step
from llmhalluc.datasets.records import Error, Record, jsonl_text
from llmhalluc.diagnostics import split_steps
from llmhalluc.launcher import print_once
from llmhalluc.params.sections import MinedErrorsParams
from llmhalluc.training_run import Run, SftTraining, fit

CLEAN_DIR = "clean"  # under output_dir: the first pass's checkpoints (removed with the run's, checkpoints.clean)
OWN_ERRORS_FILE = "own_errors.jsonl"  # in model_dir: the SFT records after mining


def own_error(record: Record, completion: str, pattern: str = DEFAULT_PATTERN) -> Error | None:
    """The first certifiably wrong step of one backtrack-resolved completion of record's prompt, or None.

    Steps are walked against the gold steps; the first that differs counts only if it is a finished
    step ('.') whose arithmetic fails. After all gold steps, an answer sentence with another answer
    counts too (the sentence found by `pattern`, prepare.answer_pattern). Different-but-right, unfinished,
    uncheckable or missing steps give None.
    """
    for index, step in enumerate(split_steps(completion)):
        if index < len(record.steps):
            if step == record.steps[index].strip():
                continue
            if step.endswith(".") and check_step(step) is False:
                return Error(step=index, text=step)
            return None
        match = re.search(pattern, step)  # the sentence after the gold steps: the answer sentence
        if not step.endswith(".") or match is None or not match.group(1):
            return None
        gold = normalize_answer(record.answer)
        stated = normalize_answer(match.group(1).strip(), gold=gold)
        return Error(step=index, text=step) if stated is not None and stated != gold else None
    return None


def choose(records: Sequence[Record], rate: float, seed: int) -> list[int]:
    """Indices of a seeded `rate` share of the records (rounded), in order."""
    count = round(rate * len(records))
    return sorted(random.Random(seed).sample(range(len(records)), count))


def near_misses(records: Sequence[Record], seed: int) -> tuple[list[Record], dict[str, Any]]:
    """The control of `mine`: each record with errors=[one near miss as prepare makes them] at a seeded step
    boundary (augment.add_errors, plausible), with the summary `mine` writes (no samples drawn).

    Why: own errors come through two passes (clean, then the mix, with a fresh optimiser); comparing
    them with one-pass synthetic errors mixes two differences. This gives synthetic errors the same
    two passes, so what is left between the two is the error source.
    """
    from llmhalluc.datasets.augment import add_errors
    from llmhalluc.params.sections import BacktrackAugmentParams

    out = [replace(r, errors=[]) for r in records]
    add_errors(out, BacktrackAugmentParams(error_rate=1.0, errors_per_example=1, error_kind="plausible"),
               random.Random(f"near-misses:{seed}"))
    examples = [{"id": r.id, "step": r.errors[0].step, "text": r.errors[0].text} for r in out[:5]]
    summary = {"records_tried": len(records), "samples_drawn": 0, "records_mined": len(out),
               "mined_share": 1.0 if records else 0.0, "examples": examples}
    return out, summary


def mine(model: Any, tokenizer: Any, records: Sequence[Record], *, samples: int, temperature: float,
         max_new_tokens: int, batch_size: int, seed: int, backtrack_id: int,
         unit: str, pattern: str = DEFAULT_PATTERN) -> tuple[list[Record], dict[str, Any]]:
    """Sample each record's prompt `samples` times; each record with an own error comes back with
    errors=[that error] (the first sample, in order, that has one), the others unchanged.

    Returns (records, summary): summary counts records tried, samples drawn, records with an own
    error and their share, and a few examples (record id, step, wrong text).
    """
    import torch

    from llmhalluc.evaluation import Sampling, generate_transformers, prompt_ids

    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)
    prompts = [prompt_ids(tokenizer, r.prompt) for r in records for _ in range(samples)]
    torch.manual_seed(seed)  # sampling draws from torch's generator: the same seed, the same completions
    was_training = model.training
    model.eval()
    try:
        completions = generate_transformers(model, tokenizer, prompts, batch_size=batch_size, sampling=Sampling(
            max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, seed=seed))
    finally:
        model.train(was_training)
    out, examples, mined = [], [], 0
    for number, record in enumerate(records):
        found = None
        for ids in completions[number * samples:(number + 1) * samples]:
            text = tokenizer.decode(retraction.resolve(ids), skip_special_tokens=True)
            if (found := own_error(record, text, pattern)) is not None:
                break
        if found is None:
            out.append(record)
            continue
        out.append(replace(record, errors=[found]))
        mined += 1
        if len(examples) < 5:
            examples.append({"id": record.id, "step": found.step, "text": found.text})
    summary = {"records_tried": len(records), "samples_drawn": len(prompts), "records_mined": mined,
               "mined_share": round(mined / len(records), 4) if records else 0.0, "examples": examples}
    return out, summary


@dataclass
class OwnErrors:
    """What sft.own_errors' first pass leaves for the second: the model, the records to train on (a mined one's
    errors replaced by its own error) and mining's summary. `off` is one pass on the records as prepared."""

    model: Any
    records: list[Record]
    summary: dict[str, Any] | None = None
    after_steps: int = 0  # the steps pass 1 trained: pass 2 logs after them

    @classmethod
    def off(cls, model: Any, records: list[Record]) -> OwnErrors:
        return cls(model, records)

    def text(self) -> str:
        return jsonl_text(self.records)

    def second(self, run: Run) -> Run:
        """Pass 2's run: the mix hashed into its identity (a new mix is a new run), the steps pass 1 left of the
        budget (equal budget with one pass)."""
        if self.summary is None:
            return run
        return replace(run, config=replace(run.config, max_steps=run.config.max_steps - self.after_steps),
                       identity={**run.identity, "own_errors": hashlib.sha256(self.text().encode()).hexdigest()})

    def metrics(self) -> dict[str, Any]:
        """For the metrics summary (dvc metrics show): the counts, without the examples."""
        if self.summary is None:
            return {}
        return {"own_errors": {k: v for k, v in self.summary.items() if k != "examples"}}

    def record(self) -> dict[str, Any]:
        """For the lineage: the summary and the file the mixed records are published in."""
        return {} if self.summary is None else {"own_errors": {**self.summary, "file": OWN_ERRORS_FILE}}

    def files(self) -> dict[str, str] | None:
        """What the out holds beside the model: the records pass 2 trained on."""
        return None if self.summary is None else {OWN_ERRORS_FILE: self.text()}


def own_errors_pass(sft: SftTraining, run: Run, model: Any, records: list[Record], own: MinedErrorsParams,
                    pattern: str) -> OwnErrors:
    """Pass 1 of sft.own_errors: after_steps steps on the records without errors (resumable, its checkpoints in
    output_dir/clean), then a seeded `rate` share of the records (seed sft.seed) gets the model's own error."""
    examples, _ = sft.encode([replace(r, errors=[]) for r in records])
    first = replace(run.config, max_steps=own.after_steps, output_dir=str(Path(run.config.output_dir) / CLEAN_DIR))
    trainer = sft.trainer(model, examples, first)
    fit(trainer, replace(run, config=first, identity={**run.identity, "pass": "clean"}), last_step=own.after_steps,
        reload_finished=True)
    seed = run.config.seed
    chosen = choose(records, own.rate, seed)
    if own.source == "synthetic":  # the control: the same two passes, prepare's kind of error
        mined, summary = near_misses([records[i] for i in chosen], seed)
    else:
        mined, summary = mine(trainer.model, sft.tokenizer, [records[i] for i in chosen], samples=own.samples,
                              temperature=own.temperature, max_new_tokens=own.max_new_tokens,
                              batch_size=own.batch_size, seed=seed, backtrack_id=sft.backtrack_id, unit=sft.unit,
                              pattern=pattern)
    records = list(records)
    for index, record in zip(chosen, mined, strict=True):
        records[index] = record
    print_once(f"train_sft: {own.source} errors: {summary['records_mined']} of {summary['records_tried']} chosen "
               f"records ({summary['samples_drawn']} samples) got one")
    return OwnErrors(trainer.model, records, summary, own.after_steps)
