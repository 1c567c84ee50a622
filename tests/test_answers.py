"""Answer extraction and normalisation on the forms real completions and datasets use."""

from __future__ import annotations

import re

import pytest

from llmhalluc import evaluation
from llmhalluc.answers import DEFAULT_PATTERN, extract_answer, normalize_answer, stated_number
from llmhalluc.rewards import build_rewards

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


# --------------------------------------------------------------------------- the catalogue: eval and reward agree

#: (completion, gold as prepare writes it, answerable, right?) in the forms GSM8K solutions and real chat models
#: write. The same table runs through eval's scorer and the GRPO accuracy reward: one rule, both judges.
CATALOGUE = [
    ("So it takes 53 minutes. The answer is 53 minutes.", "53", True, True),
    ("She makes $18 per day. The answer is $18 per day.", "18", True, True),
    ("The answer is 1,080 apples.", "1080", True, True),
    ("The answer is $1,234.50.", "1234.5", True, True),
    ("The answer is 18 dollars.", "18", True, True),
    ("The answer is: $ 18", "18", True, True),
    ("The answer is 25%.", "25", True, True),
    ("The answer is 3 * 6 = 18 dollars.", "18", True, True),
    ("The answer is 18 (6 + 6 + 6).", "18", True, True),
    ("The answer is -3 degrees.", "-3", True, True),
    ("The answer is 2.50 dollars.", "2.5", True, True),
    ("The answer is 18.0 kg.", "18", True, True),
    ("The answer is 10,000 people in total.", "10000", True, True),
    ("The answer is **$18**.", "18", True, True),
    ("The final answer is 53 minutes", "53", True, True),
    ("The answer is \\boxed{72}.", "72", True, True),
    ("The answer is 18 per day. No, the answer is 20 per day.", "20", True, True),   # the last stated wins
    ("Janet has 5 + 4 = 9 eggs left, so she sells 9 eggs.", "9", True, True),      # no answer sentence: last number
    ("The answer is 54 minutes.", "53", True, False),
    ("The answer is $18 per day.", "180", True, False),
    ("The answer is 1/2 cup.", "12", True, False),        # a fraction is not read as a number, nor folded to 12
    ("The answer is 1,08.", "108", True, False),          # a broken thousands group is no number
    ("The answer is five.", "5", True, False),            # number words are not read
    ("The answer is 3 million.", "3 million", True, True),  # a text gold compares as text ...
    ("The answer is 3 billion.", "3 million", True, False),  # ... so its leading number alone does not count
    ("The answer is unanswerable.", "unanswerable", False, True),
    ("The answer is 12 apples.", "unanswerable", False, False),
]


class CharTokenizer:
    """One id per character: the completion text reaches both judges unchanged."""

    def encode(self, text: str) -> list[int]:
        return [ord(ch) for ch in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if i)  # id 0 plays the backtrack token


@pytest.mark.parametrize(("completion", "gold", "answerable", "right"), CATALOGUE)
def test_catalogue_eval_and_reward_agree(completion, gold, answerable, right):
    tokenizer = CharTokenizer()
    ids = tokenizer.encode(completion)
    row = evaluation.score(ids, gold=gold, answerable=answerable, tokenizer=tokenizer, backtrack_id=0,
                           pattern=DEFAULT_PATTERN, abstain="unanswerable")
    assert row["correct"] is right, row
    reward = build_rewards(["accuracy"], tokenizer, 0)[0]
    scores = reward(prompts=["q"], completions=[completion], completion_ids=[ids], answer=[gold],
                    answerable=[answerable], trainer_state=None)
    assert scores == [1.0 if right else 0.0]


def test_a_number_with_its_unit_is_wrong_only_against_a_text_gold():
    assert normalize_answer("53 minutes", gold="53") == "53"
    assert normalize_answer("53 minutes") == "53 minutes"  # no gold, or a text gold: SQuAD's text form
    assert stated_number("3 * 6 = 18 dollars") == "18" and stated_number("1/2") is None


def test_the_answer_sentence_sft_trains_on_is_what_the_params_patterns_extract():
    """The sentence (answers.answer_sentence) and the patterns (params.yaml) are two facts that must agree."""
    from pathlib import Path

    import yaml

    from llmhalluc.answers import answer_sentence

    params = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text(encoding="utf-8"))
    pattern = params["prepare"]["answer_pattern"]  # its one home; GRPO and eval read it from meta.json
    for answer in ("42", "-3.5", "1,000", "Paris"):
        assert extract_answer(f"Step one. {answer_sentence(answer)}", pattern) == answer
