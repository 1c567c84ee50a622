"""Answer extraction and normalisation on the forms real completions and datasets use."""

from __future__ import annotations

import re

import pytest

from llmhalluc.answers import DEFAULT_PATTERN, extract_answer, normalize_answer

NUMERIC_PATTERN = r"The answer is (-?[\d,]*\.?\d+)"  # the numbers-only form older params files carry


@pytest.mark.parametrize(
    ("text", "extracted", "normalised"),
    [
        ("3 + 4 = 7. The answer is 1,080.", "1,080", "1080"),
        ("It costs 6 * 3 = 18 dollars. The answer is $18.", "$18", "18"),
        ("5 - 8 = -3. The answer is -3.", "-3", "-3"),
        ("10 / 4 = 2.50. The answer is 2.50.", "2.50", "2.5"),
        ("The answer is: 7.", "7", "7"),
        ("the final answer is 12", "12", "12"),
        ("The answer is 0.5", "0.5", "0.5"),
        ("The answer is $1,234,567.00.", "$1,234,567.00", "1234567"),
        ("The answer is **42**.", "**42**", "42"),
        ("The answer is (7.5%).", "(7.5%)", "7.5"),
        ("The answer is unanswerable.", "unanswerable", "unanswerable"),
        ("The answer is Denver Broncos.", "Denver Broncos", "denver broncos"),
        ("The answer is the Norman conquest.", "the Norman conquest", "norman conquest"),
        ("The answer is 7\nThat was easy.", "7", "7"),
    ],
)
def test_extract_then_normalise_real_world_forms(text, extracted, normalised):
    assert extract_answer(text) == extracted
    assert normalize_answer(extract_answer(text)) == normalised


def test_the_last_stated_answer_wins():
    assert extract_answer("The answer is 5. No, wait. The answer is 7.") == "7"


def test_without_the_answer_sentence_the_last_number_is_taken():
    assert extract_answer("3 + 4 = 7.") == "7"
    assert normalize_answer(extract_answer("2 + 2 = 1,024 apples")) == "1024"
    assert extract_answer("I cannot tell.") is None
    assert normalize_answer(extract_answer("")) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [("1,080", "1080"), ("1080.0", "1080"), ("$18", "18"), ("18.", "18"), ("2.50", "2.5"), ("-3", "−3"),
     ("+4", "4"), (".5", "0.5"), ("50%", "50"), ("`12`", "12"),
     ("The Eiffel Tower", "eiffel tower!"), ("  Unanswerable. ", "unanswerable")],
)
def test_equal_answers_normalise_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(("a", "b"), [("-3", "3"), ("2.5", "25"), ("1,080", "1,08"), ("18", "18 apples"),
                                      ("0.5", "5"), ("7.5%", "75")])
def test_different_answers_stay_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_text_keeps_squad_normalisation():
    assert normalize_answer("About 2.5 km.") == "about 25 km"  # as SQuAD's scorer does, for gold and answer alike
    assert normalize_answer("The Denver Broncos") == normalize_answer("denver broncos")


def test_nothing_left_is_no_answer():
    assert normalize_answer(None) is None
    assert normalize_answer(" . ") is None
    assert normalize_answer("the") is None


def test_a_numbers_only_pattern_still_works():
    assert extract_answer("The answer is 1,080.", NUMERIC_PATTERN) == "1,080"
    assert extract_answer("The answer is unanswerable. 4 + 4 = 8.", NUMERIC_PATTERN) == "8"  # the number fallback


def test_default_pattern_embeds_in_a_larger_regex():
    """The format reward wraps the pattern; scoped flags keep that legal."""
    ending = re.compile(r"(?:" + DEFAULT_PATTERN + r")\.?\s*$")
    assert ending.search("1 + 2 = 3. The answer is 3.")
    assert not ending.search("The answer is 3. And then some more words")
