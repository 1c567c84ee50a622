"""Reward functions for GRPO, by name, in a registry.

`grpo.reward_funcs` names them, TRL's own `grpo.reward_weights` weighs them,
and `grpo.rewards.<name>.*` holds each one's options (declared once, typed, in
llmhalluc.params.sections; the params layer refuses an unknown name or option
before any model loads).

Every function has TRL's reward signature (GRPOTrainer._calculate_rewards):
`fn(prompts=, completions=, completion_ids=, **kwargs) -> list[float]`, one
float per completion. kwargs are the dataset's other columns, one value per
completion (`answer`: the clean gold answer; `answerable`: bool, optional),
plus TRL's `trainer_state`, `log_extra` and `log_metric`.

The scores are computed from `completion_ids`, never from `completions`: TRL
decodes `completions` with skip_special_tokens=True, so the backtrack token is
gone from them and the deleted text is still there. Working on ids also makes
plain and conversational completions the same case. What is scored is the
*backtrack-resolved* completion's extracted final answer against the clean
gold answer (a raw string that still holds backtracks would be scored on text the model retracted),
resolved by the retraction unit the model was trained with (train_grpo reads it from the start model's
lineage; one `backtrack.retraction.Retraction` serves every reward, as it serves eval).

This module stays import-light (no torch, no transformers): train_grpo imports it before reading
params.yaml, so the params layer can check reward names (provided as reward_names) in well under 2 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llmhalluc.answers import AnswerRules, extract_answer, normalize_answer
from llmhalluc.backtrack.retraction import Retraction, retraction_for
from llmhalluc.errors import DataError, ParamsError
from llmhalluc.params.provided import provide

if TYPE_CHECKING:
    from llmhalluc.params.sections import RewardsParams

RewardFn = Callable[..., list[float]]

#: Keyword arguments TRL adds beside the dataset columns; they are not data.
TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


Factory = Callable[[Decoder, Retraction, "RewardsParams", "AnswerJudge"], RewardFn]
REWARDS: dict[str, Factory] = {}
provide("reward_names", REWARDS)  # the params layer checks grpo.reward_funcs against it (filled below)


def reward(name: str) -> Callable[[Factory], Factory]:
    """Register a reward factory under the name used in `grpo.reward_funcs`.

    A factory gets (tokenizer, retraction: the model's backtrack id and unit, options:
    the whole `grpo.rewards` section, judge: what a right final answer is, one for every
    reward) and returns the reward function. Each registered name has its own
    options section in RewardsParams (a test keeps the two in step).
    """

    def register(factory: Factory) -> Factory:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = factory
        return factory

    return register


def build_rewards(
    names: Sequence[str], tokenizer: Decoder, backtrack_id: int, options: RewardsParams | None = None,
    *, unit: str = "token", answers: AnswerRules | None = None,
) -> list[RewardFn]:
    """The reward functions named in params, in order, each named as TRL will log it (`rewards/<name>/mean`).

    options is the parsed `grpo.rewards` section (defaults when None); unit is the
    retraction unit of the model being trained (backtrack.retraction.unit_of its lineage); answers are the
    answer pattern and abstain phrase prepare recorded (data_dir/meta.json: their one home, read as
    eval reads them, so training and eval never judge an answer differently; defaults when None). The params
    layer has already refused unknown names; the check here is for callers that
    bypass it.
    """
    from llmhalluc.params.sections import RewardsParams

    options = options if options is not None else RewardsParams()
    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)
    answers = answers or AnswerRules()
    judge = AnswerJudge(pattern=answers.pattern, abstain=answers.abstain)
    functions = []
    for name in names:
        if name not in REWARDS:
            raise ParamsError(f"grpo.reward_funcs: no reward named {name!r}; registered: {', '.join(sorted(REWARDS))}")
        fn = REWARDS[name](tokenizer, retraction, options, judge)
        fn.__name__ = fn.__qualname__ = name  # TRL names the reward's metrics after the function
        functions.append(fn)
    return functions


def resolved_texts(tokenizer: Decoder, retraction: Retraction,
                   completion_ids: Sequence[Sequence[int]]) -> list[str]:
    """Each completion as the model meant it: backtracks applied by its unit, special tokens dropped."""
    return [tokenizer.decode(retraction.resolve(ids), skip_special_tokens=True) for ids in completion_ids]


# --------------------------------------------------------------------------- judging a final answer


@dataclass(frozen=True)
class AnswerJudge:
    """What a right final answer is, by prepare's answer rules; every reward that needs it uses this one.

    The gold answer of an unanswerable question is the abstain phrase, whatever
    the `answer` column holds (SQuAD v2 style datasets leave it empty), so an
    abstention is right there and wrong on an answerable question.
    """

    pattern: str
    abstain: str

    def gold(self, answer: Any, answerable: bool) -> str | None:
        return normalize_answer(self.abstain if not answerable else str(answer))

    def final(self, text: str, gold: str | None) -> str | None:
        """The final answer: the last answer-pattern match, else the last number (llmhalluc.answers),
        normalised against the (normalised) gold answer as eval does: "$18 per day" is 18 when gold is a number."""
        return normalize_answer(extract_answer(text, self.pattern), gold=gold)

    def stated(self, text: str, gold: str | None) -> str | None:
        """The answer an answer *sentence* in text states (the last match), without the last-number fallback.

        Used on partial text, where the last number is usually an intermediate
        result, not an answer.
        """
        matches = re.findall(self.pattern, text)
        if not matches:
            return None
        last = matches[-1]
        return normalize_answer(last if isinstance(last, str) else last[0], gold=gold)


def gold_answers(judge: AnswerJudge, reward_name: str, count: int, columns: dict[str, Any]) -> list[str | None]:
    """The normalised gold answer of each completion, from the dataset columns TRL passes."""
    if "answer" not in columns:
        given = sorted(k for k in columns if k not in TRL_KWARGS)
        raise DataError(f"reward {reward_name!r} needs the dataset column 'answer' (the clean gold answer); "
                        f"the dataset has: {', '.join(given) or 'no columns besides prompt'}")
    answers = list(columns["answer"])
    answerable = columns.get("answerable")
    answerable = [True] * count if answerable is None else [bool(a) for a in answerable]
    if not len(answers) == len(answerable) == count:
        raise ValueError(f"reward {reward_name!r}: {count} completions but {len(answers)} answers "
                         f"and {len(answerable)} answerable flags")
    return [judge.gold(a, ok) for a, ok in zip(answers, answerable, strict=True)]


def _log(columns: dict[str, Any], column: str, values: list) -> None:
    """Add a column to TRL's completions table (log_completions), when TRL offers it."""
    log_extra = columns.get("log_extra")
    if callable(log_extra):
        log_extra(column, values)


# --------------------------------------------------------------------------- accuracy


@reward("accuracy")
def accuracy(tokenizer: Decoder, retraction: Retraction, options: RewardsParams,
             judge: AnswerJudge) -> RewardFn:
    """1.0 when the resolved completion's final answer equals the gold answer, else 0.0.

    The final answer is the last match of prepare.answer_pattern,
    else the last number; both sides are normalised (`1,080` == `1080.0`, and against a
    numeric gold the number stated: `$18 per day` == `18`, llmhalluc.answers). On an
    unanswerable question (`answerable` false) the gold answer is the abstain
    phrase, so abstaining scores 1.0 there and 0.0 on an answerable question.
    """

    def score(prompts, completions, completion_ids, **columns) -> list[float]:
        golds = gold_answers(judge, "accuracy", len(completion_ids), columns)
        texts = resolved_texts(tokenizer, retraction, completion_ids)
        answers = [judge.final(text, gold) for text, gold in zip(texts, golds, strict=True)]
        _log(columns, "extracted_answer", answers)
        return [float(got is not None and got == gold) for got, gold in zip(answers, golds, strict=True)]

    return score


# --------------------------------------------------------------------------- format


@reward("format")
def answer_format(tokenizer: Decoder, retraction: Retraction, options: RewardsParams,
                  judge: AnswerJudge) -> RewardFn:
    """1.0 when the resolved completion ends with the trained answer sentence, else 0.0.

    The sentence is the last match of prepare.answer_pattern,
    closed by grpo.rewards.format.terminator ("... The answer is 7."): the
    terminator either right after the match or as the match's own last
    character (the default pattern consumes the closing period). Only
    whitespace and special tokens (end of turn) may follow. Correctness is not
    judged here.
    """
    pattern = re.compile(judge.pattern)
    terminator = options.format.terminator

    def ends_with_answer(text: str) -> bool:
        text = text.rstrip()
        matches = list(pattern.finditer(text))
        if not matches:
            return False
        tail = text[matches[-1].end():]  # the last answer sentence is the one that counts
        return tail == terminator or (not tail and text.endswith(terminator))

    def score(prompts, completions, completion_ids, **columns) -> list[float]:
        return [float(ends_with_answer(text)) for text in resolved_texts(tokenizer, retraction, completion_ids)]

    return score


# --------------------------------------------------------------------------- backtrack


@dataclass(frozen=True)
class BacktrackRun:
    """One maximal run of consecutive backtrack tokens and what it deleted."""

    start: int  # where the deleted span began, in the surviving ids
    length: int  # backtrack tokens in the run
    deleted: tuple[int, ...]  # the ids it removed (fewer than length if it ran past the start)
    before: tuple[int, ...]  # the surviving ids just before the run
    idle: bool = False  # one of its backtracks found nothing left to delete


def backtrack_runs(ids: Sequence[int], retraction: Retraction | int) -> tuple[list[BacktrackRun], list[int]]:
    """The runs of a completion, and its resolved ids (identical to the unit's Retraction.resolve).

    A bare backtrack id is the token unit. Each backtrack of a run retracts by the
    unit (one token, or back to the previous step boundary), one after the other.
    """
    if not isinstance(retraction, Retraction):
        retraction = Retraction("token", retraction)
    backtrack_id = retraction.backtrack_id
    kept: list[int] = []
    runs: list[BacktrackRun] = []
    index = 0
    while index < len(ids):
        if ids[index] != backtrack_id:
            kept.append(ids[index])
            index += 1
            continue
        end = index
        while end < len(ids) and ids[end] == backtrack_id:
            end += 1
        length = end - index
        before = tuple(kept)
        idle = any(retraction.retract(kept) == 0 for _ in range(length))
        runs.append(BacktrackRun(start=len(kept), length=length, deleted=before[len(kept):], before=before, idle=idle))
        index = end
    return runs, kept


#: Rows of the backtrack scoring table, in the order they are tried.
NO_BACKTRACKS = "no_backtracks"
OVER_CAP = "over_cap"
NOTHING_LEFT = "nothing_left"
WRONG_ANSWER = "wrong_answer"
DELETED_CORRECT = "deleted_correct"
FIXED = "fixed"


@dataclass(frozen=True)
class BacktrackScorer:
    """The backtrack table (see `backtrack_use`) for one completion at a time."""

    tokenizer: Decoder
    retraction: Retraction
    judge: AnswerJudge
    max_backtracks: int
    fix_reward: float
    penalty: float

    def verdict(self, ids: Sequence[int], gold: str | None) -> tuple[str, float]:
        """(table row, reward) of one completion."""
        runs, resolved = backtrack_runs(ids, self.retraction)
        count = sum(run.length for run in runs)
        if count == 0:
            return NO_BACKTRACKS, 0.0
        if count > self.max_backtracks:
            return OVER_CAP, -self.penalty * count / self.max_backtracks
        text = self.tokenizer.decode(resolved, skip_special_tokens=True)
        if not text.strip():
            return NOTHING_LEFT, -self.penalty
        final = self.judge.final(text, gold)
        if final is None or final != gold:
            return WRONG_ANSWER, -self.penalty
        if any(self.deleted_correct(run, resolved, gold) for run in runs):
            return DELETED_CORRECT, -self.penalty
        return FIXED, self.fix_reward

    def deleted_correct(self, run: BacktrackRun, resolved: Sequence[int], gold: str | None) -> bool:
        """Whether a run removed text that was right, or nothing at all (see the table's notes)."""
        if run.idle:  # backtracks past the start delete nothing
            return True
        if tuple(resolved[run.start:run.start + len(run.deleted)]) == run.deleted:  # rewritten unchanged
            return True
        before = self.tokenizer.decode(run.before, skip_special_tokens=True)
        return self.judge.stated(before, gold) == gold  # the right answer was already stated


@reward("backtrack")
def backtrack_use(tokenizer: Decoder, retraction: Retraction, options: RewardsParams,
                  judge: AnswerJudge) -> RewardFn:
    """Shape backtrack use: reward a retraction that turned wrong text into a right answer, penalise waste.

    Scored per completion; the first matching row wins. n = backtrack tokens in
    the completion; a *run* is a maximal stretch of consecutive backtracks;
    "right" is the accuracy reward's judgement (prepare's answer rules), on the
    resolved completion. Options: grpo.rewards.backtrack.{max_backtracks,
    fix_reward, penalty}; max_backtracks: auto is resolved from the SFT lineage
    before this runs (resolve_max_backtracks).

    | row             | condition                                                   | reward                      |
    |-----------------|-------------------------------------------------------------|-----------------------------|
    | no_backtracks   | n == 0                                                      | 0.0                         |
    | over_cap        | n > max_backtracks                                          | -penalty * n/max_backtracks |
    | nothing_left    | the resolved completion is blank (only backtracks, or every | -penalty                    |
    |                 | token deleted)                                              |                             |
    | wrong_answer    | the resolved final answer is wrong (or missing)             | -penalty                    |
    | deleted_correct | the answer is right, but some run deleted correct text      | -penalty                    |
    | fixed           | the answer is right and every run deleted wrong text        | +fix_reward                 |

    A run *deleted correct text* when any of these holds:
      - it deleted nothing, in part or whole (it ran past the start of the completion);
      - the whole span it deleted reappears unchanged at the same place in the
        resolved completion: the retraction was rewritten as it was, so what it
        removed was not wrong (a run that deletes a whole wrong step and rewrites
        its correct left side, as the SFT data does, is not this case: the span
        as a whole does not come back);
      - the text before it already stated the right answer in an answer sentence
        (answer_pattern, no last-number fallback: on partial text the last number
        is an intermediate result and matches the gold answer only by chance).
    Otherwise the run deleted a wrong partial answer, and the completion that
    ends right after such runs only is a fix.

    Why these numbers: no backtracks is neutral (accuracy already pays for being
    right), so this reward moves only completions that use the token. A fix is
    paid once however many runs it took, so repeated error-and-repair earns no
    more than one fix_reward. A known trade-off: a repaired right answer still
    outscores a clean right one by fix_reward x its weight, which a policy could
    learn to farm; keep that weight small, or add the `length` reward so the
    detour costs tokens. Nothing-but-backtracks is never positive. Over the cap
    the penalty grows with n, so GRPO's group comparison still prefers fewer.
    """
    opts = options.backtrack
    if not isinstance(opts.max_backtracks, int):  # train_grpo resolves auto (resolve_max_backtracks) first
        raise ParamsError("grpo.rewards.backtrack.max_backtracks: 'auto' was not resolved from the SFT lineage "
                          "(rewards.resolve_max_backtracks); set a number")
    scorer = BacktrackScorer(tokenizer, retraction, judge, opts.max_backtracks, opts.fix_reward, opts.penalty)

    def score(prompts, completions, completion_ids, **columns) -> list[float]:
        golds = gold_answers(judge, "backtrack", len(completion_ids), columns)
        verdicts = [scorer.verdict(ids, gold) for ids, gold in zip(completion_ids, golds, strict=True)]
        _log(columns, "backtrack_rule", [row for row, _ in verdicts])
        return [value for _, value in verdicts]

    return score


#: max_backtracks: auto = this many times the most backtracks one SFT example carried. Sampling a
#: policy that SFT taught to retract one error makes runs of about that length (one
#: wrong step is ~20 backtracks for the token unit with a real tokenizer); twice it leaves room for a second error, or a
#: slightly long run, before the over-cap penalty starts.
AUTO_MARGIN = 2


def resolve_max_backtracks(options: RewardsParams, sft_lengths: dict[str, Any] | None, *,
                           needed: bool) -> RewardsParams:
    """options with grpo.rewards.backtrack.max_backtracks: auto replaced by a number, so that number is what runs
    and what the resolved params and lineage record.

    auto = max(1, AUTO_MARGIN x the most backtracks one SFT example carried): `lengths.max_backtracks`,
    which train_sft records in the start model's lineage (sft_lengths: its Lineage.lengths).
    The count is in backtrack tokens, so it fits the unit the model was trained with: ~20 per wrong
    step for `token` with a real tokenizer, 1 per wrong step for `step` and `retry`; error-free SFT
    data gives 1 (the floor: the over-cap penalty divides by it). An int is kept as it is. With no
    such record auto stays unresolved when the backtrack reward is unused (needed false) and is a
    DataError when it is used.
    """
    from dataclasses import replace

    if options.backtrack.max_backtracks != "auto":
        return options
    most = (sft_lengths or {}).get("max_backtracks")
    if most is None:
        if not needed:
            return options
        raise DataError("grpo.rewards.backtrack.max_backtracks: auto needs the SFT model's lineage.json to record "
                        "lengths.max_backtracks (train_sft writes it; rerun train_sft), or set a number")
    value = max(1, AUTO_MARGIN * int(most))
    return replace(options, backtrack=replace(options.backtrack, max_backtracks=value))


# --------------------------------------------------------------------------- length


@reward("length")
def length_budget(tokenizer: Decoder, retraction: Retraction, options: RewardsParams,
                  judge: AnswerJudge) -> RewardFn:
    """A soft penalty over a token budget: 0.0 up to max_tokens, then falling linearly to -penalty at twice it.

    Tokens are the raw completion's, backtracks and the end-of-turn token
    included: a backtrack costs a generation step like any other token.
    """
    budget, penalty = options.length.max_tokens, options.length.penalty

    def score(prompts, completions, completion_ids, **columns) -> list[float]:
        return [0.0 if len(ids) <= budget else -penalty * min(1.0, (len(ids) - budget) / budget)
                for ids in completion_ids]

    return score
