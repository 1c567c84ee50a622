"""Backtrack augmentation: where an SFT solution gets a mistake, and which kind (llmhalluc.datasets.mistakes).

Only the place (a step boundary) and the text are decided here. Turning them
into ids -- error ids, then the backtracks that retract them, then the correct
continuation -- happens in train_sft, where the model's tokenizer is known
(llmhalluc.backtrack.encoding.encode_example), so the count is exact for any tokenizer.

Placement (`prepare.backtrack.placement`):

- ``example``: a share `error_rate` of the examples gets `errors_per_example` errors, each at a
  boundary drawn uniformly. An example that has retracted once never does again, so the model
  can learn "one retraction per solution" instead of reading the step.
- ``boundary``: every boundary (before each step and before the answer sentence) gets an
  error with probability `error_rate`, independently: where an error goes, and whether one
  already went, carries no information; examples without any error stay in the data.

A kind that cannot make its mistake at a boundary falls back: a plausible or lookup error
on a step without numbers borrows the same step of another problem (a fluent but wrong
continuation), else random characters.
"""

from __future__ import annotations

import random

from llmhalluc.datasets.mistakes import random_characters, wrong_step
from llmhalluc.datasets.records import Error, Record
from llmhalluc.params.sections import BacktrackAugmentParams


def add_errors(records: list[Record], params: BacktrackAugmentParams, rng: random.Random) -> None:
    """Give the records their errors by the placement rule (in place); with error_rate 0 they are left
    exactly as they were (the baseline)."""
    for record in records:
        segments = record.segments()
        if params.placement == "boundary":
            places = [index for index in range(len(segments)) if rng.random() < params.error_rate]
        elif rng.random() < params.error_rate:
            places = [rng.randrange(len(segments)) for _ in range(params.errors_per_example)]
        else:
            continue
        for index in places:
            record.errors.append(Error(step=index, text=_wrong(segments, index, params.error_kind, records, rng)))
        record.errors.sort(key=lambda e: e.step)


def _wrong(segments: list[str], index: int, kind: str, records: list[Record], rng: random.Random) -> str:
    correct = segments[index]
    made = wrong_step(kind, correct, rng)
    if made is not None:
        return made
    if kind != "random":
        borrowed = _borrow(correct, index, len(segments), records, rng)
        if borrowed is not None:
            return borrowed
    return random_characters(correct, rng)


def _borrow(correct: str, index: int, count: int, records: list[Record], rng: random.Random) -> str | None:
    """The segment in the same position (from the end) of another record, if one differs."""
    for _ in range(8):
        other = rng.choice(records).segments()
        position = len(other) - (count - index)
        if 0 <= position < len(other) and other[position] != correct:
            return other[position]
    return None
