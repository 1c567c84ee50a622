"""What one backtrack retracts (the model's retraction unit) and resolution: the completion as the model meant it.

Resolution is defined on token ids, never on re-tokenised text: only the ids
know where token boundaries are. What one backtrack retracts is the model's
*retraction unit* (`sft.backtrack.unit`, recorded in models/sft/lineage.json as
``"retraction": {"unit": ...}`` and read back by `unit_of`), so SFT encoding,
GRPO rewards, eval and the diagnostics probe all resolve as the model was
trained. The units:

- ``token``: one backtrack deletes the one token before
  it; an error of N tokens is followed by N backtracks.
- ``step``: one backtrack deletes the last *step*: it pops at least one token,
  then keeps popping until the last kept token ends a step (see `Retraction.ends_step`)
  or nothing is left. An error step is followed by ONE backtrack; the model is
  meant to continue as if the step were gone.
- ``retry`` (Physics of LMs 2.2 style): the encoding is the same (wrong step,
  one backtrack, the right step) and so is the resolved text (the step the
  backtrack follows is dropped); the unit promises instead that the model
  *conditions on* its mistake: the wrong step stays in context and the next step
  replaces it. Honestly: with a plain decoder both `step` and `retry` keep the
  retracted ids in the attention context during generation (nothing is
  physically removed from the KV cache), so today the two differ only in name
  and in what a later generation-time implementation may do; they are kept
  apart so that results are recorded under the unit the researcher meant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmhalluc.lineage import Lineage

UNITS = ("token", "step", "retry")
DEFAULT_UNIT = "token"  # a model whose lineage records no unit (or that has none) retracts per token


def resolve_ids(ids: Sequence[int], backtrack_id: int) -> list[int]:
    """Apply every backtrack: each pops the last surviving token (a no-op on an empty prefix)."""
    kept: list[int] = []
    for token in ids:
        if token == backtrack_id:
            if kept:
                kept.pop()
        else:
            kept.append(token)
    return kept


@dataclass
class Retraction:
    """What one backtrack retracts, as one object every consumer (rewards, eval, tracking, probe) resolves with.

    `decode` turns ids into text (a tokenizer's decode); `step` and `retry` need
    it to see step boundaries, `token` does not. Token texts are cached: the
    boundary test decodes the same ids and pairs many times.
    """

    unit: str
    backtrack_id: int
    decode: Callable[[Sequence[int]], str] | None = None
    _texts: dict[int, str] = field(default_factory=dict, repr=False, compare=False)
    _pairs: dict[tuple[int, int], bool] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"retraction unit {self.unit!r}: must be one of {', '.join(UNITS)}")
        if self.unit != "token" and self.decode is None:
            raise ValueError(f"retraction unit {self.unit!r} needs a decode function to find step boundaries")

    @property
    def per_step(self) -> bool:
        """Whether one backtrack retracts a whole step (step, retry) rather than one token."""
        return self.unit != "token"

    def text(self, token: int) -> str:
        if token not in self._texts:
            assert self.decode is not None
            self._texts[token] = self.decode([token])
        return self._texts[token]

    def ends_step(self, kept: int, following: int) -> bool:
        """Whether a step ends between the kept token and the token that followed it.

        The rule: the kept token's text ends with a newline, or it ends with "."
        AND the following token's text starts with whitespace. The whitespace
        condition keeps decimals ("7.5": "." is followed by "5") and abbreviations
        glued to their next word inside the step; train_sft puts a space before
        every step but the first, so byte-level BPE (GPT-2 style, SmolLM2, the tiny
        model) gives "." then " Next". The start of the completion is always a
        boundary (resolution stops when nothing is left). A step that does not end
        in "." or a newline is not a boundary: train_sft checks every encoded
        example round-trips, so such data fails at encoding, not silently.
        """
        before = self.text(kept)
        if before.endswith("\n"):
            return True
        if not before.endswith("."):
            return False
        if (kept, following) not in self._pairs:  # the pair decoded together: a metaspace (SentencePiece)
            pair = self.decode([kept, following])  # decoder drops a lone token's leading space, not a pair's
            self._pairs[kept, following] = pair[len(before):len(before) + 1].isspace()
        return self._pairs[kept, following]

    def retract(self, kept: list[int]) -> int:
        """Apply one backtrack to the surviving ids in place; how many ids it removed (0 on an empty prefix)."""
        if not kept:
            return 0
        if not self.per_step:
            kept.pop()
            return 1
        removed = 0
        while kept:
            popped = kept.pop()
            removed += 1
            if kept and self.ends_step(kept[-1], popped):
                break
        return removed

    def resolve(self, ids: Sequence[int]) -> list[int]:
        """The completion as the model meant it: every backtrack applied by the unit."""
        if not self.per_step:
            return resolve_ids(ids, self.backtrack_id)
        kept: list[int] = []
        for token in ids:
            if token == self.backtrack_id:
                self.retract(kept)
            else:
                kept.append(token)
        return kept

    def render_error(self, error_ids: Sequence[int]) -> list[int]:
        """The backtracks that retract exactly this error (see `render_error`)."""
        return render_error(self.unit, error_ids, self.backtrack_id)


def render_error(unit: str, error_ids: Sequence[int], backtrack_id: int) -> list[int]:
    """The backtracks that retract exactly one error step: one per token (token), one for the step (step, retry).

    A function of the unit alone (no tokenizer), so the probe states the retraction without decoding.
    """
    if unit not in UNITS:
        raise ValueError(f"retraction unit {unit!r}: must be one of {', '.join(UNITS)}")
    return [backtrack_id] * (len(error_ids) if unit == "token" else 1)


def unit_of(lineage: Lineage | Mapping[str, Any] | None) -> str:
    """The retraction unit a model was trained with: its own lineage's, else its nearest ancestor's, else token.

    train_sft records it; train_grpo and merge copy it, and the nearest record up the parent
    chain also covers a folder written before they did. A model without lineage (a hub model)
    is `token`, sft.backtrack.unit's default.
    """
    unit = Lineage.of(lineage).nearest("retraction", "unit")
    if unit is None:
        return DEFAULT_UNIT
    if unit not in UNITS:
        from llmhalluc.errors import DataError

        raise DataError(f"lineage.json: retraction unit {unit!r} is not one of {', '.join(UNITS)}")
    return str(unit)


def retraction_for(tokenizer: Any, backtrack_id: int, lineage: Lineage | Mapping[str, Any] | None = None,
                   unit: str | None = None) -> Retraction:
    """The Retraction of a model: its unit (given, else from its lineage) over its tokenizer's decode."""
    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False)

    return Retraction(unit or unit_of(lineage), backtrack_id, decode)


def count_backtracks(ids: Sequence[int], backtrack_id: int) -> int:
    return sum(1 for token in ids if token == backtrack_id)
