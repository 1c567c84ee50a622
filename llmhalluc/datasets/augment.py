"""Backtrack augmentation: where an SFT solution gets a mistake, and what the mistake says.

Only the place (a step boundary) and the text are decided here. Turning them
into ids -- error ids, then exactly as many backtrack ids, then the correct
continuation -- happens in train_sft, where the model's tokenizer is known
(llmhalluc.backtrack.encode_example), so the count is exact for any tokenizer.

A *plausible* error is the step that belongs there with one number nudged
(a near miss: "3 + 4 = 8."), or, for a step without numbers, the same step
of another problem of the set (a fluent but wrong continuation). A *random*
error is a short run of random characters.
"""

from __future__ import annotations

import random
import re

from llmhalluc.datasets.records import Error, Record
from llmhalluc.params.sections import BacktrackAugmentParams

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RANDOM_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789+-=*/ "


def add_errors(records: list[Record], params: BacktrackAugmentParams, rng: random.Random) -> None:
    """Give each record, with probability error_rate, errors_per_example errors at step boundaries (in place).

    A boundary is before any step or before the answer sentence; with
    error_rate 0 the records are left exactly as they were (the baseline).
    """
    for record in records:
        if rng.random() >= params.error_rate:
            continue
        segments = record.segments()
        for _ in range(params.errors_per_example):
            index = rng.randrange(len(segments))
            record.errors.append(Error(step=index, text=_wrong(segments, index, params.error_kind, records, rng)))
        record.errors.sort(key=lambda e: e.step)


def _wrong(segments: list[str], index: int, kind: str, records: list[Record], rng: random.Random) -> str:
    correct = segments[index]
    if kind == "plausible":
        nudged = nudge_number(correct, rng)
        if nudged is not None:
            return nudged
        borrowed = _borrow(correct, index, len(segments), records, rng)
        if borrowed is not None:
            return borrowed
    while True:
        text = "".join(rng.choice(_RANDOM_ALPHABET) for _ in range(rng.randint(3, 8))).strip()
        if text and text != correct:
            return text


def nudge_number(text: str, rng: random.Random) -> str | None:
    """text with its last number changed to a near miss, or None when it has no number."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    number = match.group()
    if "." in number:
        whole, frac = number.split(".")
        digit = (int(frac[-1]) + rng.choice([1, 2, 3, 7, 8, 9])) % 10
        wrong = f"{whole}.{frac[:-1]}{digit}"
    else:
        value = int(number)
        spread = max(2, abs(value) // 10)
        delta = rng.choice([d for d in range(-spread, spread + 1) if d and (value < 0 or value + d >= 0)])
        wrong = str(value + delta)
    return text[: match.start()] + wrong + text[match.end() :]


def _borrow(correct: str, index: int, count: int, records: list[Record], rng: random.Random) -> str | None:
    """The segment in the same position (from the end) of another record, if one differs."""
    for _ in range(8):
        other = rng.choice(records).segments()
        position = len(other) - (count - index)
        if 0 <= position < len(other) and other[position] != correct:
            return other[position]
    return None
