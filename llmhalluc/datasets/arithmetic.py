"""The embedded default task: seeded multi-step arithmetic word problems.

Small steps ("7 - 2 = 5.") so that a tiny model on a CPU can learn them, and a
near-miss value for each step so augmentation can insert a *plausible* mistake.
"""

from __future__ import annotations

import random

from llmhalluc.datasets.records import Error, Record
from llmhalluc.params.sections import ArithmeticParams, BacktrackAugmentParams


def generate(count: int, params: ArithmeticParams, rng: random.Random, prefix: str) -> list[Record]:
    """`count` problems; the same rng state gives the same problems."""
    records = []
    for index in range(count):
        steps_count = rng.randint(params.min_steps, params.max_steps)
        value = rng.randint(1, params.max_operand)
        words = [f"Start with {value}."]
        steps = []
        for _ in range(steps_count):
            operand = rng.randint(1, params.max_operand)
            subtract = rng.random() < 0.5 and (params.allow_negative or value - operand >= 0)
            result = value - operand if subtract else value + operand
            words.append(f"{'Subtract' if subtract else 'Add'} {operand}.")
            steps.append(f"{value} {'-' if subtract else '+'} {operand} = {result}.")
            value = result
        question = " ".join(words) + " What is the result?"
        records.append(Record(id=f"{prefix}-{index}", question=question, steps=steps, answer=str(value)))
    return records


def add_errors(records: list[Record], params: BacktrackAugmentParams, rng: random.Random) -> None:
    """Give a share (error_rate) of records errors at step boundaries, in place.

    A plausible error is the first step's statement with a near-miss result
    ("3 + 4 = 8."); a random one is a few random digits and symbols.
    """
    for record in records:
        if not record.steps or rng.random() >= params.error_rate:
            continue
        for _ in range(params.errors_per_example):
            step = rng.randrange(len(record.steps))
            record.errors.append(Error(step=step, text=_wrong(record.steps[step], params.error_kind, rng)))
        record.errors.sort(key=lambda e: e.step)


def _wrong(step: str, kind: str, rng: random.Random) -> str:
    if kind == "random":
        return "".join(rng.choice("0123456789+-= ") for _ in range(rng.randint(2, 6))).strip() or "0"
    left, _, result = step.rstrip(".").rpartition("= ")
    wrong = int(result) + rng.choice([-2, -1, 1, 2])
    return f"{left}= {wrong}."
