"""The embedded default task: seeded multi-step arithmetic word problems.

Small steps ("7 - 2 = 5.") so that a tiny model on a CPU can learn them. The
generator is a registry source (`source: {builtin: arithmetic}`) yielding raw
rows like any file would; the `arithmetic` converter re-checks every chain.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from llmhalluc.params.sections import ArithmeticParams

#: The generator's own step form, exactly: "7 - 2 = 5."
_STEP = re.compile(r"^(-?\d+) ([+-]) (\d+) = (-?\d+)\.$")
#: One calculation `a op b = c` anywhere in a step: the generator's steps, and GSM8K's once prepare has
#: stripped the `<<48/2=24>>` notes ("She sold 48/2 = 24 clips."); $ signs and thousands commas allowed.
_NUMBER = r"-?\$?\d(?:\d|,\d{3})*(?:\.\d+)?"
_EQUATION = re.compile(rf"(?<![\d.,])({_NUMBER}) ?([-+*/×x]) ?({_NUMBER}) ?= ?({_NUMBER})(?!\d|\.\d|,\d)")


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
        left, result = int(match[1]), int(match[4])
        if not _holds(match[1], match[2], match[3], match[4]):
            return f"step {number} {step!r} is wrong arithmetic"
        if previous is not None and left != previous:
            return f"step {number} {step!r} does not start from the previous result {previous}"
        previous = result
    if previous is None or str(previous) != answer:
        return f"the chain ends at {previous}, not at the answer {answer}"
    return None


def equations(step: str) -> list[re.Match]:
    """The `a op b = c` calculations of a step, leaving out the tail of a longer expression ("2 + 3 + 4 = 9")."""
    found = []
    for match in _EQUATION.finditer(step):
        before = step[: match.start()].rstrip()
        if not before.endswith(("+", "-", "*", "/", "×", "x", "(", "=")):
            found.append(match)
    return found


def check_step(step: str) -> bool | None:
    """Whether a solution step's arithmetic is right: True when every `a op b = c` in it holds, False when
    one does not, None when it has none to recompute (a sentence, the answer sentence, a longer expression).

    Only the arithmetic inside the step is checked, not whether it follows from the step before: eval's
    own-error diagnostic asks whether a model notices a calculation it got wrong.
    """
    verdicts = [_holds(m[1], m[2], m[3], m[4]) for m in equations(step)]
    return all(verdicts) if verdicts else None


def _number(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def calculate(left: str, op: str, right: str) -> Decimal:
    """a op b from the numbers as written ($ and thousands commas allowed); InvalidOperation or
    ZeroDivisionError when they are not numbers or b is 0 under "/"."""
    a, b = _number(left), _number(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*×x":
        return a * b
    if b == 0:
        raise ZeroDivisionError(f"{left} / {right}")
    return a / b


def _places(written: str) -> int:
    exponent = _number(written).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def format_like(value: Decimal, written: str) -> str:
    """value written as `written` writes its number: the same decimal places (a quotient rounded to them,
    or to 2 where the written number has none and the value is not whole), its $ sign and thousands commas."""
    places = _places(written)
    if not places and value != value.to_integral_value():
        places = 2
    text = f"{value.quantize(Decimal(1).scaleb(-places)):,f}" if "," in written else \
        f"{value.quantize(Decimal(1).scaleb(-places)):f}"
    if "$" in written:
        text = text.replace("-", "-$") if text.startswith("-") else "$" + text
    return text


def _holds(left: str, op: str, right: str, result: str) -> bool:
    """a op b == c, with a rounded quotient accepted at c's own precision (GSM8K writes 10/3 = 3.33)."""
    try:
        value, c = calculate(left, op, right), _number(result)
    except (InvalidOperation, ZeroDivisionError):
        return False
    if value == c:
        return True
    places = _places(result)
    return op == "/" and places > 0 and value.quantize(Decimal(1).scaleb(-places)) == c
