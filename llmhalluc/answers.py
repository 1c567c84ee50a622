"""Final answers: pull the answer out of a solution text and normalise it for comparison.

Rewards and eval both compare *normalised* answers, so `1,080`, `1080.0` and
`1080.` are one answer and the model is not punished for formatting.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

DEFAULT_PATTERN = r"The answer is (-?[\d,]*\.?\d+)"
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def extract_answer(text: str, pattern: str = DEFAULT_PATTERN) -> str | None:
    """The last match of pattern's group 1; failing that the last number in the text; else None."""
    matches = re.findall(pattern, text)
    if matches:
        last = matches[-1]
        return last if isinstance(last, str) else last[0]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form: numbers without separators, signs or trailing zeros; other text lower-cased."""
    if answer is None:
        return None
    text = answer.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return " ".join(text.lower().split())
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")
