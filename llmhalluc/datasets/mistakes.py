"""The kinds of wrong step, a ladder by how visible the mistake is where the backtrack is decided.

The backtrack is decided at a step's end. What a model can read there differs by kind:

- ``random``: a short run of random characters. Visible at once (it is not a step at
  all): the positive control, which tells a limit of the pipeline from a limit of the task.
- ``lookup``: a step whose operand is not the number it should copy (the previous result or
  the problem's number), with its arithmetic consistent: "10 + 4 = 14." after a result of 12.
  Checkable by comparing two written numbers (Physics of LMs 2.2's errors are of this kind).
  A step with no `a op b = c` gets its last number nudged (an answer sentence that does not
  state the last result is a lookup error too).
- ``plausible``: a near miss, the right step with its result nudged: "7 + 3 = 11.". Visible
  only to a model that recomputes the step and compares (prepare.check_steps writes that
  recomputation out).

Each kind is a function of one step's text and a seeded rng, returning the wrong text or
None where it cannot make its mistake there; a step that carries a check
(llmhalluc.datasets.step_check) gets the mistake in its body and a check recomputed from
the wrong body, so the check always says what the step's own operands give. Kinds are
registered by name (`KINDS`); prepare's augmentation, the own-errors control and eval's
probe all make their mistakes here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from llmhalluc.datasets.arithmetic import calculate, equations, format_like
from llmhalluc.datasets.step_check import has_check, strip_check, with_check

#: kind name -> make(step, rng) -> the wrong step, or None where this kind has no mistake to make.
KINDS: dict[str, Callable[[str, random.Random], str | None]] = {}

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RANDOM_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789+-=*/ "


def kind(name: str) -> Callable:
    """Register a mistake maker under name."""

    def register(make: Callable[[str, random.Random], str | None]) -> Callable[[str, random.Random], str | None]:
        KINDS[name] = make
        return make

    return register


def wrong_step(name: str, step: str, rng: random.Random) -> str | None:
    """The step with a mistake of this kind (a check, if the step has one, recomputed from the wrong body),
    or None where the kind cannot make one (no number to nudge)."""
    if name not in KINDS:
        raise ValueError(f"mistake kind {name!r}: must be one of {', '.join(KINDS)}")
    checked = has_check(step)
    body = strip_check(step)
    wrong = KINDS[name](body, rng)
    if wrong is None or wrong == body:
        return None
    return with_check(wrong) if checked else wrong


@kind("plausible")
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
        wrong = str(value + _delta(value, rng))
    return text[: match.start()] + wrong + text[match.end() :]


@kind("lookup")
def wrong_operand(text: str, rng: random.Random) -> str | None:
    """The step computed from a wrong operand: one of the last `a op b = c`'s operands nudged and c
    recomputed (a result that stays at or above zero when it was), or, without one, the last number nudged."""
    matches = [m for m in equations(text) if "." not in m[1] + m[3] and "$" not in m[1] + m[3]]
    if not matches:
        return nudge_number(text, rng)
    match = matches[-1]
    left, op, right, result = match[1], match[2], match[3], match[4]
    for _ in range(16):
        values = [int(left.replace(",", "")), int(right.replace(",", ""))]
        which = rng.randrange(2) if op != "/" else 0  # a wrong divisor would be a different kind of step
        values[which] += _delta(values[which], rng)
        a, b = str(values[0]), str(values[1])
        try:
            value = calculate(a, op, b)
        except ZeroDivisionError:
            continue
        if value < 0 <= calculate(left, op, right):
            continue
        pieces, cursor = [], match.start()
        for group, new in ((1, a), (3, b), (4, format_like(value, result))):
            pieces += [text[cursor:match.start(group)], new]
            cursor = match.end(group)
        return text[: match.start()] + "".join(pieces) + text[cursor:]
    return None


@kind("random")
def random_characters(text: str, rng: random.Random) -> str:
    """A short run of random characters (never the step itself)."""
    while True:
        wrong = "".join(rng.choice(_RANDOM_ALPHABET) for _ in range(rng.randint(3, 8))).strip()
        if wrong and wrong != text:
            return wrong


def _delta(value: int, rng: random.Random) -> int:
    """A near miss's offset: a few units either way (more for larger numbers), never 0, never below 0 from >= 0."""
    spread = max(2, abs(value) // 10)
    return rng.choice([d for d in range(-spread, spread + 1) if d and (value < 0 or value + d >= 0)])
