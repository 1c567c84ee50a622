"""Final answers: pull the answer out of a solution text and normalise it for comparison.

Rewards and eval both compare *normalised* answers, so `1,080`, `$1080.00` and
`1080.` are one answer and a model is not punished (or rewarded) for formatting.
Answers are numbers (GSM8K, the built-in arithmetic task) or short text spans
(SQuAD-style, and the abstain phrase "unanswerable"); one pattern and one
normaliser serve both, and a number never goes through the text path.

Against a *numeric* gold answer, a stated answer is read as the number it states,
as GSM8K solutions and real chat models write it: "53 minutes", "$18 per day",
"1,080 apples", "x = 12 cookies" are 53, 18, 1080 and 12 (``normalize_answer(...,
gold=...)``). Only then: a text gold such as SQuAD's "3 million" must not equal
"3 billion". Eval and the GRPO rewards both judge through this one rule.

This module stays import-light (re, decimal): the rewards and eval import it. The params layer
asks for its two checks of the answer rules through llmhalluc.params.provided (bottom of this file).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from llmhalluc.params.provided import provide
from llmhalluc.params.sections import DEFAULT_ABSTAIN, DEFAULT_PATTERN  # declared with prepare's keys


@dataclass(frozen=True)
class AnswerRules:
    """How a final answer is found and what abstaining says: prepare's facts about its data (prepare.answer_pattern,
    prepare.abstain_answer), recorded in data_dir/meta.json, read by GRPO's rewards and by eval alike
    (records.read_answer_rules), so the two never judge an answer by different rules."""

    pattern: str = DEFAULT_PATTERN
    abstain: str = DEFAULT_ABSTAIN

# The number an answer states: optional sign and currency sign (a space may follow it), thousands
# groups or plain digits, decimals; not a digit run inside a word or a fraction ("1/2" is no number).
_STATED_NUMBER = re.compile(
    r"(?<![\w.,/])([+-]?)[$€£¥₹]?[ \t]?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d/]|[.,]\d)"
)
_NUMBER_IN_TEXT = re.compile(r"[-−]?\$?\d[\d,]*(?:\.\d+)?|[-−]?\.\d+")
# A whole answer that is a number: optional sign and currency sign, thousands groups or plain digits, decimals.
_NUMBER = re.compile(r"[+-]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\$?\.\d+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DECORATION = " \t*_`'\"()[]{}"  # markdown emphasis, quotes and brackets around an answer


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be an answer pattern (not a regex, or no group 1 for the answer), or None."""
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    if groups < 1:
        return "needs a capture group: group 1 is the final answer, e.g. 'The answer is (-?[\\d,]*\\.?\\d+)'"
    return None


def answer_sentence(answer: str) -> str:
    """The closing sentence every SFT solution ends with; the answer pattern reads the answer back out of it."""
    return f"The answer is {answer}."


def sentence_problem(pattern: str, abstain: str) -> str | None:
    """Why `pattern` does not read answers back out of the sentence SFT trains on, or None.

    Matched directly, not through extract_answer: its last-number fallback would hide a
    pattern that never matches."""
    for answer in ("42", "-3.5", "1,000", "Paris", abstain):
        sentence = answer_sentence(answer)
        matches = [m.group(1) for m in re.finditer(pattern, f"Step one. {sentence}")]
        found = matches[-1].strip() if matches and matches[-1] else None
        if found != answer:
            return f"reads {found!r} from the answer sentence SFT trains on, {sentence!r}; it must read {answer!r}"
    return None


def extract_answer(text: str, pattern: str = DEFAULT_PATTERN) -> str | None:
    """The last match of pattern's group 1 (the whole match if it has no group); else the last number; else None.

    The last match wins because a model that corrects itself states its final
    answer last. The number fallback keeps a completion that shows its result
    without the answer sentence comparable on numeric tasks.
    """
    compiled = re.compile(pattern)
    matches = list(compiled.finditer(text))
    if matches:
        last = matches[-1]
        answer = last.group(1) if compiled.groups else last.group(0)
        if answer is not None and answer.strip():
            return answer.strip()
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> str | None:
    """Canonical decimal text of a whole-number answer ("-1,080.50" -> "-1080.5"), or None if not a number."""
    text = text.replace("−", "-")  # the Unicode minus sign
    if not _NUMBER.fullmatch(text):
        return None
    try:
        number = Decimal(text.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def stated_number(answer: str) -> str | None:
    """The number an answer span states, canonical ("$18 per day" -> "18", "1,080 apples" -> "1080"), or None.

    The first number of the span, after its last "=" when it shows a calculation
    ("3 * 6 = 18 dollars" states 18, and so does "18 (6 + 6 + 6)"). A fraction or a
    span with no number states none, so it is compared as text (and is wrong against
    a number). Number words ("five") are not read.
    """
    text = answer.replace("−", "-")
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    match = _STATED_NUMBER.search(text)
    if match is None:
        return None
    return _as_number(match.group(1) + match.group(2))


def normalize_answer(answer: str | None, gold: str | None = None) -> str | None:
    """Canonical form for comparison, or None when there is no answer.

    Numbers: no thousands separators, currency sign, percent sign, trailing period
    or trailing zeros, and no decoration around them (`$1,080.00.` and `**1080**` are
    `1080`; `-3` stays `-3`). Anything else is text: SQuAD's normalisation (lower
    case, punctuation and articles dropped, spaces collapsed). An answer that
    normalises to nothing is None.

    ``gold`` is the *normalised* gold answer the result will be compared with. When it
    is a number, the answer is read as the number it states (stated_number), so units,
    currency and trailing words ("53 minutes", "$18 per day") do not make a right
    number wrong; an answer that states no number falls back to the text form.
    """
    if answer is None:
        return None
    numeric_gold = gold is not None and _as_number(gold) is not None
    if numeric_gold:
        number = stated_number(answer)
        if number is not None:
            return number
    text = answer.strip().rstrip(".").strip()
    bare = text.strip(_DECORATION).rstrip(".").removesuffix("%").strip()
    number = _as_number(bare)
    if number is not None:
        return number
    words = " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())
    if numeric_gold and words and _as_number(words) is not None:
        # A number the reader refused ("1/2", "1,08") would fold into digits ("12", "108") as text
        # and could equal the gold by accident: keep its own spelling instead.
        return " ".join(text.lower().split())
    return words or None


# prepare.answer_pattern's check on the key, and its cross-check against prepare.abstain_answer.
provide("answer_pattern", pattern_problem)
provide("answer_sentence", sentence_problem)
