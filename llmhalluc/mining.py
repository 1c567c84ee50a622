"""Retry data from the model's own mistakes: sample a partly trained model, keep the first step it got wrong.

Prepare's synthetic errors are near misses the model may never make. Here the errors are the
model's: train_sft (sft.own_errors) samples completions of SFT prompts from its first-pass model
and, for each record, takes the first step that is *certifiably* wrong: it differs from the gold
step at the same place, after gold steps only, and its arithmetic is recomputed and fails
(`arithmetic.check_step` False), or it is an answer sentence with a wrong answer after all the gold
steps. A step that differs but is right, or cannot be recomputed, certifies nothing (None). The
wrong step's prefix is the gold prefix, so "gold steps[:i] + own wrong step + backtrack(s) + gold
steps[i:] + answer" shows the model exactly the context it erred in.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llmhalluc.answers import DEFAULT_PATTERN, normalize_answer
from llmhalluc.backtrack import retraction_for
from llmhalluc.datasets.arithmetic import check_step
from llmhalluc.datasets.records import Error, Record
from llmhalluc.diagnostics import split_steps


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
