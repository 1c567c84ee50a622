"""Reward functions for GRPO, by name, in a registry.

Each registered factory receives what a reward needs to see completions the way
the model meant them (the tokenizer and the backtrack token id) and returns a
function with TRL's signature: `(prompts, completions, completion_ids, **columns)
-> list[float]`, one float per completion. Dataset columns (`answer`,
`answerable`) arrive as keyword arguments.

Rewards score the *backtrack-resolved* completion's extracted final answer
against the clean ground truth. This module must stay import-light (no torch):
the params layer imports it to check reward names in under 2 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from llmhalluc.answers import extract_answer, normalize_answer
from llmhalluc.backtrack import resolve_ids

RewardFn = Callable[..., list[float]]


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


REWARDS: dict[str, Callable[..., RewardFn]] = {}


def reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Register a reward factory under the name used in `grpo.reward_funcs`."""

    def register(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = factory
        return factory

    return register


def build_rewards(
    names: Sequence[str], tokenizer: Decoder, backtrack_id: int, options: dict[str, Any]
) -> list[RewardFn]:
    """The reward functions named in params, in order. Names were checked by the params layer."""
    functions = []
    for name in names:
        fn = REWARDS[name](tokenizer=tokenizer, backtrack_id=backtrack_id, options=options.get(name))
        fn.__name__ = name  # TRL logs each reward under its function's name
        functions.append(fn)
    return functions


def resolved_texts(tokenizer: Decoder, backtrack_id: int, completion_ids: Sequence[Sequence[int]]) -> list[str]:
    return [tokenizer.decode(resolve_ids(ids, backtrack_id), skip_special_tokens=True) for ids in completion_ids]


def _pattern(options: Any) -> str:
    from llmhalluc.answers import DEFAULT_PATTERN

    return getattr(options, "answer_pattern", None) or DEFAULT_PATTERN


@reward("accuracy")
def accuracy(tokenizer: Decoder, backtrack_id: int, options: Any = None) -> RewardFn:
    """1.0 when the resolved completion's final answer equals the gold answer, else 0.0."""
    pattern = _pattern(options)

    def score(prompts, completions, completion_ids, answer, **_columns) -> list[float]:
        texts = resolved_texts(tokenizer, backtrack_id, completion_ids)
        return [
            float(normalize_answer(extract_answer(text, pattern)) == normalize_answer(str(gold)))
            for text, gold in zip(texts, answer, strict=True)
        ]

    return score


@reward("format")
def answer_format(tokenizer: Decoder, backtrack_id: int, options: Any = None) -> RewardFn:
    """1.0 when the resolved completion ends with the trained answer sentence, else 0.0."""
    ending = re.compile(r"(?:" + _pattern(options) + r")\.?\s*$")

    def score(prompts, completions, completion_ids, **_columns) -> list[float]:
        texts = resolved_texts(tokenizer, backtrack_id, completion_ids)
        return [float(bool(ending.search(text.strip()))) for text in texts]

    return score
