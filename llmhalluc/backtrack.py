"""The backtrack mechanism: one token that deletes the token before it.

Resolution is defined on token ids, never on text: a backtrack deletes exactly
one *token*, and only the ids know where token boundaries are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_TOKEN = "<|backtrack|>"


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


def count_backtracks(ids: Sequence[int], backtrack_id: int) -> int:
    return sum(1 for token in ids if token == backtrack_id)


IGNORE_INDEX = -100  # the label transformers' loss skips


def encode_example(
    prompt_ids: Sequence[int],
    steps: Sequence[str],
    answer_sentence: str,
    errors: Sequence[tuple[int, str]],
    tokenize: Callable[[str], list[int]],
    backtrack_id: int,
    end_ids: Sequence[int],
    *,
    mask_errors: bool,
) -> dict[str, list[int]]:
    """input_ids and labels for one SFT example, built segment by segment in token ids.

    An error before step i becomes its own ids followed by exactly as many
    backtrack ids, so the backtracks delete precisely the error whatever the
    tokenizer. The prompt is never in the loss; with mask_errors the error ids
    are not either (the backtracks and the corrections always are).
    """
    errors_at: dict[int, list[str]] = {}
    for step, text in errors:
        errors_at.setdefault(step, []).append(text)
    input_ids = list(prompt_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids)
    segments = [*steps, answer_sentence]
    for index, text in enumerate(segments):
        prefix = " " if index else ""
        for error in errors_at.get(index, []):
            error_ids = tokenize(prefix + error)
            input_ids += error_ids + [backtrack_id] * len(error_ids)
            labels += ([IGNORE_INDEX] * len(error_ids) if mask_errors else error_ids) + [backtrack_id] * len(error_ids)
        ids = tokenize(prefix + text)
        input_ids += ids
        labels += ids
    input_ids += list(end_ids)
    labels += list(end_ids)
    return {"input_ids": input_ids, "labels": labels}
