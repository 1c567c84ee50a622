"""The GRPO rewards on hand-built completions, scored the way GRPOTrainer calls them.

Completions are built in token ids with the real tiny tokenizer (backtrack token
included), then handed over exactly as TRL 1.16 does: `completion_ids` with the
end-of-turn id, `completions` decoded with skip_special_tokens=True (so the
backtrack token is gone and the deleted text still shows), plain or
conversational, plus the dataset columns and TRL's extra kwargs.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from llmhalluc.answers import AnswerRules
from llmhalluc.backtrack.retraction import resolve_ids
from llmhalluc.errors import DataError, ParamsError
from llmhalluc.params.sections import (
    BacktrackRewardOptions,
    FormatRewardOptions,
    LengthRewardOptions,
    RewardsParams,
)
from llmhalluc.rewards import (
    DELETED_CORRECT,
    FIXED,
    NO_BACKTRACKS,
    NOTHING_LEFT,
    OVER_CAP,
    REWARDS,
    WRONG_ANSWER,
    backtrack_runs,
    build_rewards,
)

BACKTRACK = "<|backtrack|>"
#: A pattern that also captures the abstain phrase, so abstention tests do not depend on the default's reach.
ABSTAIN_PATTERN = r"The answer is (-?[\d,]*\.?\d+|unanswerable)"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from llmhalluc.tiny_model import build_tiny_model

    corpus = [f"{a} + {b} = {a + b}. {a + b} - 1 = {a + b - 1}. The answer is {a + b}."
              for a in range(10) for b in range(10)]
    corpus += ["The answer is unanswerable. So Extra Answer: 1,080"] * 3
    folder: Path = build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus, vocab_size=320,
                                    extra_special_tokens=[BACKTRACK])
    return AutoTokenizer.from_pretrained(folder)


class Completions:
    """Build completion ids from text segments, retractions and raw backtracks."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bt = tokenizer.convert_tokens_to_ids(BACKTRACK)
        self.eos = tokenizer.eos_token_id

    def text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def retract(self, text: str) -> list[int]:
        """text, then exactly one backtrack per token of it (the SFT data's shape)."""
        ids = self.text(text)
        return ids + [self.bt] * len(ids)

    def build(self, *parts: str | list[int] | int, eos: bool = True) -> list[int]:
        """str: encoded text; list: ids as given; int n: n backtracks. Ends with the end-of-turn id like TRL's."""
        ids: list[int] = []
        for part in parts:
            if isinstance(part, str):
                ids += self.text(part)
            elif isinstance(part, int):
                ids += [self.bt] * part
            else:
                ids += part
        return ids + ([self.eos] if eos else [])


@pytest.fixture(scope="module")
def c(tokenizer) -> Completions:
    return Completions(tokenizer)


def call(fn, tokenizer, completion_ids, answers, answerable=None, *, conversational=False, extra=None):
    """Call a reward with exactly the keyword arguments GRPOTrainer._calculate_rewards passes."""
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    if conversational:
        prompts = [[{"role": "user", "content": "Start with 3. Add 4. What is the result?"}]] * len(texts)
        completions = [[{"role": "assistant", "content": t}] for t in texts]
    else:
        prompts = ["Start with 3. Add 4. What is the result?"] * len(texts)
        completions = texts
    columns = {"answer": answers}
    if answerable is not None:
        columns["answerable"] = answerable
    logged: dict[str, list] = {}
    kwargs = {"trainer_state": None, "log_extra": lambda column, values: logged.setdefault(column, values),
              "log_metric": lambda name, value: None, **columns, **(extra or {})}
    scores = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
    assert len(scores) == len(completion_ids) and all(isinstance(s, float) for s in scores)
    return scores, logged


def options(**sections) -> RewardsParams:
    return dataclasses.replace(RewardsParams(), **sections)


def one(name: str, tokenizer, opts: RewardsParams | None = None, pattern: str | None = None):
    bt = tokenizer.convert_tokens_to_ids(BACKTRACK)
    return build_rewards([name], tokenizer, bt, opts, answers=AnswerRules(pattern=pattern) if pattern else None)[0]


# --------------------------------------------------------------------------- registry


def test_every_options_section_belongs_to_a_registered_reward():
    """A section without a reward would be a dead key; accuracy has none: it judges by prepare's answer rules."""
    assert {f.name for f in dataclasses.fields(RewardsParams)} == {"format", "backtrack", "length"}
    assert set(REWARDS) == {"accuracy", "format", "backtrack", "length"}


def test_rewards_judge_by_prepares_answer_rules(tmp_path):
    """The pattern and the abstain phrase have one home, prepare (data_dir/meta.json); a folder that predates
    the record gets the defaults, and a broken record is a data error, not a silent default."""
    import json

    from llmhalluc.answers import DEFAULT_PATTERN
    from llmhalluc.datasets.records import read_answer_rules

    assert read_answer_rules(tmp_path) == AnswerRules() and AnswerRules().pattern == DEFAULT_PATTERN
    (tmp_path / "meta.json").write_text(json.dumps({"abstain_answer": "n/a", "answer_pattern": r"Answer: (\d+)"}))
    assert read_answer_rules(tmp_path) == AnswerRules(pattern=r"Answer: (\d+)", abstain="n/a")
    (tmp_path / "meta.json").write_text(json.dumps({"answer_pattern": r"Answer: \d+"}))
    with pytest.raises(DataError, match="answer_pattern: needs a capture group"):
        read_answer_rules(tmp_path)


def test_build_rewards_names_each_function_as_trl_logs_it(tokenizer):
    from trl.trainer.utils import get_callable_name

    bt = tokenizer.convert_tokens_to_ids(BACKTRACK)
    functions = build_rewards(["format", "accuracy", "length"], tokenizer, bt, RewardsParams())
    assert [get_callable_name(f) for f in functions] == ["format", "accuracy", "length"]
    assert [f.__name__ for f in build_rewards(["backtrack"], tokenizer, bt, options(
        backtrack=BacktrackRewardOptions(max_backtracks=16)))] == ["backtrack"]


def test_build_rewards_refuses_an_unknown_name(tokenizer):
    with pytest.raises(ParamsError, match=r"no reward named 'acuracy'.*registered: accuracy, backtrack"):
        build_rewards(["acuracy"], tokenizer, 0, None)


def test_backtrack_runs_resolve_like_resolve_ids():
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice([0, 0, 1, 2, 3, 4]) for _ in range(rng.randint(0, 20))]
        runs, resolved = backtrack_runs(ids, 0)
        assert resolved == resolve_ids(ids, 0)
        assert sum(r.length for r in runs) == ids.count(0)
        for run in runs:
            assert list(run.before[run.start:]) == list(run.deleted)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_accuracy_scores_the_resolved_final_answer(tokenizer, c, conversational):
    fn = one("accuracy", tokenizer)
    ids = [
        c.build("3 + 4 = 7. The answer is 7."),                      # right
        c.build("3 + 4 = 8. The answer is 8."),                      # wrong
        c.build("3 + 4 = 7. The answer is ", c.retract("8."), "7."),  # wrong answer retracted: right
        c.build("3 + 4 = 7. The answer is 7", 1, "8."),               # "7" retracted for 8: wrong
        c.build("3 + 4 = 7."),                                        # no sentence: the last number
        c.build("I do not know."),                                    # no answer at all
    ]
    scores, logged = call(fn, tokenizer, ids, ["7"] * len(ids), [True] * len(ids), conversational=conversational)
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert logged["extracted_answer"] == ["7", "8", "7", "8", "7", None]
    # What TRL hands over as text still shows the retracted "8." (skip_special_tokens drops only the token).
    assert "8." in tokenizer.decode(ids[2], skip_special_tokens=True)


def test_accuracy_normalises_numbers_and_takes_the_last_sentence(tokenizer, c):
    fn = one("accuracy", tokenizer)
    ids = [c.build("The answer is 1,080."), c.build("The answer is 3. The answer is 7."), c.build("The answer is 7.0")]
    scores, _ = call(fn, tokenizer, ids, ["1080", "7", "7"])  # no answerable column: all answerable
    assert scores == [1.0, 1.0, 1.0]


def test_accuracy_pattern_is_an_option(tokenizer, c):
    fn = one("accuracy", tokenizer, pattern=r"Answer: (\d+)")
    ids = [c.build("Answer: 7 and then 9"), c.build("The answer is 7. Answer: 9")]
    scores, _ = call(fn, tokenizer, ids, ["7", "7"])
    assert scores == [1.0, 0.0]


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_abstaining_is_right_only_on_unanswerable_questions(tokenizer, c, conversational):
    fn = one("accuracy", tokenizer, pattern=ABSTAIN_PATTERN)
    abstain, guess = c.build("The answer is unanswerable."), c.build("The answer is 7.")
    ids = [abstain, abstain, guess, guess, c.build("The answer is ", c.retract("7."), "unanswerable.")]
    answers = ["unanswerable", "7", "unanswerable", "7", ""]  # the last: SQuAD-v2 style empty gold
    answerable = [False, True, False, True, False]
    scores, _ = call(fn, tokenizer, ids, answers, answerable, conversational=conversational)
    assert scores == [1.0, 0.0, 0.0, 1.0, 1.0]


def test_the_abstain_phrase_is_prepares(tokenizer, c):
    """The phrase has one home, prepare.abstain_answer (data_dir/meta.json); the stage hands it to the rewards."""
    bt = tokenizer.convert_tokens_to_ids(BACKTRACK)
    answers = AnswerRules(pattern=r"The answer is (\w+)", abstain="Unknown")
    accuracy = build_rewards(["accuracy"], tokenizer, bt, answers=answers)[0]
    scores, _ = call(accuracy, tokenizer,
                     [c.build("The answer is unknown."), c.build("The answer is unanswerable.")],
                     ["", ""], [False, False])
    assert scores == [1.0, 0.0]  # normalised: case does not matter; the default phrase is no longer it


def test_a_dataset_without_the_answer_column_is_a_data_error(tokenizer, c):
    fn = one("accuracy", tokenizer)
    with pytest.raises(DataError, match=r"needs the dataset column 'answer'.*the dataset has: solution"):
        fn(prompts=["p"], completions=["x"], completion_ids=[c.build("x")], solution=["7"],
           trainer_state=None, log_extra=None, log_metric=None)


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_format_wants_the_answer_sentence_at_the_end(tokenizer, c, conversational):
    fn = one("format", tokenizer)
    ids = [
        c.build("3 + 4 = 7. The answer is 7."),                  # trained format
        c.build("3 + 4 = 8. The answer is 8."),                  # wrong but well formed
        c.build("3 + 4 = 7. The answer is 7", eos=False),        # truncated: no terminator, no end of turn
        c.build("The answer is 7. So"),                          # text after the sentence
        c.build("The answer is 7.", c.retract(" So Extra")),     # ... deleted by backtracks: resolved it ends well
        c.build("3 + 4 = 7."),                                   # no answer sentence
    ]
    scores, _ = call(fn, tokenizer, ids, ["7"] * len(ids), conversational=conversational)
    assert scores == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_format_terminator_is_an_option(tokenizer, c):
    # A numbers-only pattern: with a text-capable one, "7 So" would itself be the answer.
    fn = one("format", tokenizer, options(format=FormatRewardOptions(terminator="")),
             pattern=r"The answer is (-?\d+)")
    scores, _ = call(fn, tokenizer, [c.build("The answer is 7"), c.build("The answer is 7 So")], ["7", "7"])
    assert scores == [1.0, 0.0]


# --------------------------------------------------------------------------- backtrack: one test per table row


def backtrack_scores(tokenizer, ids, answers, answerable=None, conversational=False, **opts):
    fn = one("backtrack", tokenizer, options(backtrack=BacktrackRewardOptions(**{"max_backtracks": 16, **opts})),
             pattern=ABSTAIN_PATTERN)
    scores, logged = call(fn, tokenizer, ids, answers, answerable, conversational=conversational)
    return scores, logged["backtrack_rule"]


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_row_no_backtracks_is_neutral(tokenizer, c, conversational):
    ids = [c.build("3 + 4 = 7. The answer is 7."), c.build("3 + 4 = 8. The answer is 8.")]
    assert backtrack_scores(tokenizer, ids, ["7", "7"], conversational=conversational) == (
        [0.0, 0.0], [NO_BACKTRACKS, NO_BACKTRACKS])


def test_row_over_cap_grows_with_the_count_even_for_a_fix(tokenizer, c):
    fix = c.build("3 + 4 = ", c.retract("8. 8 - 1 = 7."), "7. The answer is 7.")
    n = len(c.text("8. 8 - 1 = 7."))
    longer = c.build("3 + 4 = ", c.retract("8. 8 - 1 = 7. The answer is 8."), "7. The answer is 7.")
    m = len(c.text("8. 8 - 1 = 7. The answer is 8."))
    scores, rows = backtrack_scores(tokenizer, [fix, longer], ["7", "7"], max_backtracks=4, penalty=0.5)
    assert rows == [OVER_CAP, OVER_CAP]
    assert scores == [pytest.approx(-0.5 * n / 4), pytest.approx(-0.5 * m / 4)]
    assert scores[1] < scores[0] < -0.5  # over the cap is worse than any other penalty, and more is worse still
    # Under a larger cap the same completion is a fix.
    assert backtrack_scores(tokenizer, [fix], ["7"], max_backtracks=n)[1] == [FIXED]


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_row_nothing_left_is_never_rewarded(tokenizer, c, conversational):
    ids = [
        c.build(3),                             # only backtracks
        c.build(3, eos=False),                  # only backtracks, cut off
        c.build(c.retract("3 + 4 = 7.")),       # wrote, then deleted everything
    ]
    scores, rows = backtrack_scores(tokenizer, ids, ["7"] * 3, conversational=conversational, fix_reward=5.0)
    assert rows == [NOTHING_LEFT] * 3 and scores == [-1.0] * 3


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_row_wrong_answer(tokenizer, c, conversational):
    ids = [
        c.build("3 + 4 = ", c.retract("7."), "8. The answer is 8."),       # deleted the right value for a wrong one
        c.build("3 + 4 = ", c.retract("9."), "8. The answer is 8."),       # fixed nothing
        c.build("3 + 4 = 7. The answer is ", c.retract("7."), "unanswerable."),  # abstained on an answerable one
        c.build("3 + 4 = 7", 1),                                           # deleted the answer: none left
    ]
    scores, rows = backtrack_scores(tokenizer, ids, ["7"] * 4, [True] * 4, conversational=conversational,
                                    penalty=0.25)
    assert rows == [WRONG_ANSWER] * 4 and scores == [-0.25] * 4


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_row_deleted_correct_text(tokenizer, c, conversational):
    ids = [
        # the deleted span comes back unchanged at the same place: it was not wrong
        c.build("3 + 4 = ", c.retract("7."), "7. The answer is 7."),
        # the text before the run already stated the right answer (then a word after it was retracted)
        c.build("3 + 4 = 7. The answer is 7.", c.retract(" So")),
        # a backtrack at the very start deletes nothing
        c.build(1, "3 + 4 = 7. The answer is 7."),
        # a run longer than what precedes it: the wrong "8" goes, the second backtrack deletes nothing
        c.build("8", 2, "3 + 4 = 7. The answer is 7."),
        # one run fixes, another wastes: the waste decides
        c.build("3 + 4 = ", c.retract("8."), "7. The answer is ", c.retract("7."), "7."),
    ]
    scores, rows = backtrack_scores(tokenizer, ids, ["7"] * 5, conversational=conversational)
    assert rows == [DELETED_CORRECT] * 5 and scores == [-1.0] * 5


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_row_fixed(tokenizer, c, conversational):
    ids = [
        # a wrong value retracted token for token, then the right one
        c.build("3 + 4 = ", c.retract("8."), "7. The answer is 7."),
        # the SFT data's shape: the whole wrong step retracted, its correct left side rewritten
        c.build(c.retract("3 + 4 = 8."), "3 + 4 = 7. The answer is 7."),
        # a wrong stated answer retracted into an abstention on an unanswerable question
        c.build("The answer is ", c.retract("7."), "unanswerable."),
        # two fixes are paid once, not twice
        c.build("3 + 4 = ", c.retract("8."), "7. 7 - 1 = ", c.retract("5."), "6. The answer is 6."),
        # the wrong intermediate equals the gold answer by chance: partial text is judged by answer sentences only
        c.build("3 + 4 = ", c.retract("6."), "7. 7 - 1 = 6. The answer is 6."),
    ]
    answers = ["7", "7", "unanswerable", "6", "6"]
    scores, rows = backtrack_scores(tokenizer, ids, answers, [True, True, False, True, True],
                                    conversational=conversational, fix_reward=0.5)
    assert rows == [FIXED] * 5 and scores == [0.5] * 5


# --------------------------------------------------------------------------- length


def test_length_is_free_to_the_budget_then_falls_to_the_penalty(tokenizer, c):
    fn = one("length", tokenizer, options(length=LengthRewardOptions(max_tokens=10, penalty=0.5)))
    bt = c.bt
    ids = [[5] * 10, [5] * 15, [5] * 20, [5] * 100, [5] * 5 + [bt] * 10]  # backtracks are tokens too
    scores, _ = call(fn, tokenizer, ids, ["7"] * 5)
    assert scores == [0.0, -0.25, -0.5, -0.5, -0.25]


# --------------------------------------------------------------------------- inside TRL


def test_grpo_trainer_calls_the_rewards_with_its_own_arguments(tokenizer, c, tmp_path: Path):
    """Through GRPOTrainer._calculate_rewards itself: columns arrive, names and weights line up."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    folder = Path(tokenizer.name_or_path)
    model = AutoModelForCausalLM.from_pretrained(folder)
    names = ["accuracy", "format", "backtrack", "length"]
    rewards = build_rewards(names, tokenizer, c.bt, options(backtrack=BacktrackRewardOptions(max_backtracks=16)),
                            answers=AnswerRules(pattern=ABSTAIN_PATTERN))
    prompt = [{"role": "user", "content": "Start with 3. Add 4. What is the result?"}]
    data = Dataset.from_list([{"prompt": prompt, "answer": "7", "answerable": True}] * 2)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, report_to="none", reward_weights=[1, 1, 1, 1])
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=data,
                          processing_class=tokenizer)
    assert trainer.reward_func_names == names
    ids = [c.build("3 + 4 = ", c.retract("8."), "7. The answer is 7."), c.build("3 + 4 = 8. The answer is 8.")]
    completions = [[{"role": "assistant", "content": t}] for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    inputs = [{"prompt": prompt, "answer": "7", "answerable": True}] * 2
    got = trainer._calculate_rewards(inputs, [prompt, prompt], completions, ids)
    assert torch.equal(got, torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    # The columns the rewards add to TRL's completions table (log_completions) arrive there.
    assert trainer._pending_extra_logs["backtrack_rule"] == [FIXED, NO_BACKTRACKS]
    assert trainer._pending_extra_logs["extracted_answer"] == ["7", "8"]
