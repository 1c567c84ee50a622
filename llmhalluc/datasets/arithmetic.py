"""The embedded default task: seeded multi-step arithmetic word problems.

Small steps ("7 - 2 = 5.") so that a tiny model on a CPU can learn them. The
generator is a registry source (`source: {builtin: arithmetic}`) yielding raw
rows like any file would; the `arithmetic` converter re-checks every chain.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from llmhalluc.params.sections import ArithmeticParams

_STEP = re.compile(r"^(-?\d+) ([+-]) (\d+) = (-?\d+)\.$")


def generate(params: ArithmeticParams, rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless stream of problems as raw rows (question, steps, answer); the same rng state repeats it."""
    index = 0
    while True:
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
        yield {"id": index, "question": " ".join(words) + " What is the result?", "steps": steps, "answer": str(value)}
        index += 1


def check_chain(steps: list[str], answer: str) -> str | None:
    """None when every step is correct arithmetic, follows from the previous result, and ends at answer."""
    previous = None
    for number, step in enumerate(steps, start=1):
        match = _STEP.match(step)
        if not match:
            return f"step {number} {step!r} is not of the form 'a + b = c.'"
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        if (left + right if op == "+" else left - right) != result:
            return f"step {number} {step!r} is wrong arithmetic"
        if previous is not None and left != previous:
            return f"step {number} {step!r} does not start from the previous result {previous}"
        previous = result
    if previous is None or str(previous) != answer:
        return f"the chain ends at {previous}, not at the answer {answer}"
    return None
