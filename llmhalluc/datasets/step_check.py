"""A step's own recomputation, written after it: "7 + 3 = 11 (check: 7 + 3 = 10)."

Why: a near miss ("7 + 3 = 11.") is visible only to a model that compares what was
written with what it would have written; measured here, the tiny models know the number
is wrong where it stands (its surprisal) but carry nothing of it to the step's end, where
the backtrack is decided. With `prepare.check_steps` every step, right or wrong, ends with
the recomputation of each `a op b = c` in it, so the decision at the step's end compares
two numbers that are both written, as a lookup error does (Ye et al., Physics of LMs 2.2:
errors a probe can read at the decision point are the ones retry data teaches).

The check is part of the step's text (one step, one boundary: a step-unit backtrack
retracts the step with its check), always the last thing before the step's final ".".
It is computed from the step's own operands, so a wrong result gets the right value
(the visible mismatch) and a lookup error, whose arithmetic is consistent, a matching
one: the check reveals calculation errors, not copying errors.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from llmhalluc.datasets.arithmetic import calculate, equations, format_like

#: The check a step ends with: " (check: ...)" right before its final "." (or at its end).
_CHECK = re.compile(r" \(check: [^()]*\)(?=\.?$)")


def with_check(step: str) -> str:
    """The step with its recomputation appended; unchanged when it has no `a op b = c` or already has a check."""
    if _CHECK.search(step):
        return step
    checks = []
    for match in equations(step):
        value = _recompute(match[1], match[2], match[3], match[4])
        if value is not None:
            checks.append(step[match.start():match.start(4)] + value)  # "48/2 = 24", spelled as the step spells it
    if not checks:
        return step
    body, end = (step[:-1], ".") if step.endswith(".") else (step, "")
    return f"{body} (check: {'; '.join(checks)}){end}"


def strip_check(step: str) -> str:
    """The step without its recomputation (unchanged when it has none)."""
    return _CHECK.sub("", step)


def has_check(step: str) -> bool:
    return _CHECK.search(step) is not None


def check_value_span(step: str) -> tuple[int, int] | None:
    """(start, end) character offsets of the last recomputed value in the step's check, or None without one.

    The probe reads whether the model writes this value itself (recomputes) or copies the result before it.
    """
    match = _CHECK.search(step)
    if match is None:
        return None
    inner = match.group()
    value = re.search(r"= ?(\S+?)\)$", inner)
    if value is None:
        return None
    return match.start() + value.start(1), match.start() + value.end(1)


def _recompute(left: str, op: str, right: str, result: str) -> str | None:
    """a op b, written as the step writes its result (its precision, its $ and thousands commas)."""
    try:
        value = calculate(left, op, right)
    except (InvalidOperation, ZeroDivisionError):
        return None
    return format_like(value, result) if isinstance(value, Decimal) else None
