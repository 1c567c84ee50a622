"""SFT examples in token ids: each error followed by the backtracks that retract it under the model's unit.

Built segment by segment with the tokenizer of the model being trained, never by re-tokenising
augmented text: only the ids know where token boundaries are, and N error tokens must be followed
by exactly N backtracks (per token) or one (per step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmhalluc.backtrack.retraction import DEFAULT_UNIT, Retraction, retraction_for

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
    retraction: Retraction | None = None,
) -> dict[str, list[int]]:
    """input_ids and labels for one SFT example, built segment by segment in token ids.

    An error before step i becomes its own ids followed by the backtracks that
    retract exactly it under the unit (`Retraction.render_error`: as many as its
    tokens for `token`, one for `step` / `retry`), whatever the tokenizer. The
    prompt is never in the loss; with mask_errors the error ids are not either
    (the backtracks and the corrections always are). retraction None is the
    token unit. For a per-step unit the step boundary depends on token texts, so
    the example is checked: its resolved completion must equal the clean one,
    else ValueError (the data's steps do not end where the unit can see).
    """
    retraction = retraction or Retraction(DEFAULT_UNIT, backtrack_id)
    errors_at: dict[int, list[str]] = {}
    for step, text in errors:
        errors_at.setdefault(step, []).append(text)
    input_ids = list(prompt_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids)
    segments = [*steps, answer_sentence]
    clean: list[int] = []  # the completion without its errors: what resolution must give back
    for index, text in enumerate(segments):
        prefix = " " if index else ""
        for error in errors_at.get(index, []):
            error_ids = tokenize(prefix + error)
            backtracks = retraction.render_error(error_ids)
            input_ids += error_ids + backtracks
            labels += ([IGNORE_INDEX] * len(error_ids) if mask_errors else error_ids) + backtracks
        ids = tokenize(prefix + text)
        clean += ids
        input_ids += ids
        labels += ids
    if retraction.per_step and errors and retraction.resolve(input_ids[len(prompt_ids):]) != clean:
        raise ValueError(f"a {retraction.unit}-unit backtrack does not retract exactly the error step here: each "
                         "step must end in '.' or a newline and the next begin with a space (Retraction.ends_step)")
    input_ids += list(end_ids)
    labels += list(end_ids)
    return {"input_ids": input_ids, "labels": labels}


def encode_records(records: Sequence[Any], tokenizer: Any, backtrack_id: int, *, mask_errors: bool,
                   unit: str = DEFAULT_UNIT) -> tuple[list[dict[str, list[int]]], list[int]]:
    """input_ids + labels per record, in the chat template the model will be prompted with, and each prompt's length.

    unit is the retraction unit (sft.backtrack.unit): how many backtracks follow an error, and
    for step / retry a check that each example resolves to its clean completion (DataError naming
    the record otherwise: training on data the unit cannot resolve would teach the wrong thing).

    The labels (-100 off the loss) are what SFTTrainer trains on: a `labels` column is used
    as is (tests/test_train_sft.py checks the collated batch). train_sft's records (datasets.records.Record).
    """
    end_ids = tokenizer.encode(tokenizer.eos_token, add_special_tokens=False)  # the end of turn (use_end_of_turn)

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)
    examples, prompt_lengths = [], []
    for r in records:
        prompt_ids = tokenizer.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        prompt_lengths.append(len(prompt_ids))
        try:
            examples.append(encode_example(prompt_ids, r.steps, r.answer_sentence(),
                                           [(e.step, e.text) for e in r.errors], tokenize, backtrack_id,
                                           end_ids, mask_errors=mask_errors, retraction=retraction))
        except ValueError as exc:
            from llmhalluc.errors import DataError

            raise DataError(f"sft.backtrack.unit {unit}: record {r.id}: {exc}") from exc
    return examples, prompt_lengths
