"""Converters: one raw row of a source -> the canonical Record, by name, in a registry.

Every converter produces the same record (id, question with its context, step-wise
solution, final answer, answerable), so nothing after `prepare` knows which
dataset a record came from. A row that cannot be converted raises BadRow with
the reason; `prepare` turns it into a DataError naming the file and line, or
drops and counts it (`prepare.on_bad_row: skip`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from llmhalluc.answers import normalize_answer
from llmhalluc.datasets.records import Record

#: A prompt template's placeholders; registry entries may use {question} and {context}.
PLACEHOLDER = re.compile(r"\{(\w*)\}")


def render_prompt(template: str, question: str, context: str | None) -> str:
    """Fill {question} and {context}; plain substitution, so a template can never run code or read attributes."""
    values = {"question": question, "context": context or ""}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template).strip()


class BadRow(Exception):
    """A row this converter cannot turn into a record.

    `kind` is a short fixed reason (the key under which `prepare.on_bad_row: skip`
    counts drops in the stats); the message gives the row's particulars.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Context:
    """What a converter needs besides the row: the entry's settings and the project's abstain phrase."""

    entry: str
    columns: Mapping[str, str]
    prompt: str
    abstain_answer: str

    def get(self, row: Mapping[str, Any], field: str, *, required: bool = True) -> Any:
        """The row's value for a canonical field, through the entry's column mapping."""
        column = self.columns.get(field, field)
        if column not in row or row[column] is None:
            if required:
                mapped = f" (mapped from {field})" if column != field else ""
                raise BadRow("missing_column", f"missing column {column!r}{mapped}")
            return None
        return row[column]


@dataclass
class Converter:
    fn: Callable[[Mapping[str, Any], int, Context], Record]
    #: canonical fields the converter reads; registry `columns:` may map only these
    fields: tuple[str, ...]
    #: fields that must be columns of the source (checked once, before rows are converted)
    required: tuple[str, ...]

    def __call__(self, row: Mapping[str, Any], index: int, ctx: Context) -> Record:
        return self.fn(row, index, ctx)


CONVERTERS: dict[str, Converter] = {}


def converter(name: str, fields: tuple[str, ...], required: tuple[str, ...]):
    """Register a converter under the name a registry entry uses."""

    def register(fn: Callable[[Mapping[str, Any], int, Context], Record]) -> Callable:
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} registered twice")
        CONVERTERS[name] = Converter(fn, fields, required)
        return fn

    return register


def numeric_answer(text: str) -> str:
    """A final numeric answer in canonical form (`1,080` -> `1080`, `2.50` -> `2.5`), or BadRow."""
    answer = normalize_answer(str(text))
    try:
        Decimal(answer or "")
    except InvalidOperation:
        raise BadRow("answer_not_a_number", f"final answer {text!r} is not a number") from None
    return answer


def _row_id(ctx: Context, row: Mapping[str, Any], index: int) -> str:
    given = ctx.get(row, "id", required=False)
    return f"{ctx.entry}-{given if given not in (None, '') else index}"


_CALCULATOR = re.compile(r"<<[^<>]*>>")


@converter("gsm8k", fields=("id", "question", "answer"), required=("question", "answer"))
def gsm8k(row: Mapping[str, Any], index: int, ctx: Context) -> Record:
    """GSM8K: `answer` holds the worked solution with `<<48/2=24>>` calculator notes and a final `#### 72` line."""
    solution = str(ctx.get(row, "answer"))
    body, marker, final = solution.rpartition("####")
    if not marker:
        raise BadRow("no_final_answer", "answer has no final '#### <number>' line")
    steps = [" ".join(_CALCULATOR.sub("", line).split()) for line in body.splitlines()]
    steps = [s for s in steps if s]
    if not steps:
        raise BadRow("no_solution_steps", "answer has no solution steps before '####'")
    return Record(id=_row_id(ctx, row, index), question=render_prompt(ctx.prompt, str(ctx.get(row, "question")), None),
                  steps=steps, answer=numeric_answer(final.strip()))


@converter("squad_v2", fields=("id", "question", "context", "answers"), required=("question", "context", "answers"))
def squad_v2(row: Mapping[str, Any], index: int, ctx: Context) -> Record:
    """SQuAD v2: extractive answers in `answers.text`; an empty list means the question cannot be answered."""
    answers = ctx.get(row, "answers")
    texts = answers.get("text") if isinstance(answers, Mapping) else None
    if not isinstance(texts, list):
        raise BadRow("bad_answers", f"answers must be a mapping with a 'text' list, got {answers!r}")
    answerable = bool(texts)
    answer = str(texts[0]).strip() if answerable else ctx.abstain_answer
    if not answer:
        raise BadRow("empty_answer", "answers.text[0] is empty")
    question = render_prompt(ctx.prompt, str(ctx.get(row, "question")), str(ctx.get(row, "context")))
    return Record(id=_row_id(ctx, row, index), question=question, steps=[], answer=answer, answerable=answerable)


@converter("generic", fields=("id", "question", "answer", "steps", "context", "answerable"),
           required=("question", "answer"))
def generic(row: Mapping[str, Any], index: int, ctx: Context) -> Record:
    """Any question/answer set through the column mapping; steps (a list, or lines of text) are optional.

    An answer equal to the abstain phrase, or `answerable: false`, marks the question unanswerable.
    """
    answer_raw = ctx.get(row, "answer")
    answer = str(answer_raw).strip().rstrip(".").strip() if answer_raw is not None else ""
    answerable_raw = ctx.get(row, "answerable", required=False)
    answerable = bool(answerable_raw) if answerable_raw is not None else answer.lower() != ctx.abstain_answer.lower()
    if not answerable:
        answer = ctx.abstain_answer
    if not answer:
        raise BadRow("empty_answer", "empty answer")
    if answerable:
        answer = normalize_answer(answer) if _is_number(answer) else answer
    steps_raw = ctx.get(row, "steps", required=False)
    if steps_raw is None:
        steps = []
    elif isinstance(steps_raw, list):
        steps = [str(s).strip() for s in steps_raw if str(s).strip()]
    else:
        steps = [line.strip() for line in str(steps_raw).splitlines() if line.strip()]
    context = ctx.get(row, "context", required=False)
    question = render_prompt(ctx.prompt, str(ctx.get(row, "question")), None if context is None else str(context))
    return Record(id=_row_id(ctx, row, index), question=question, steps=steps, answer=answer, answerable=answerable)


@converter("arithmetic", fields=("id", "question", "steps", "answer"), required=("question", "steps", "answer"))
def arithmetic(row: Mapping[str, Any], index: int, ctx: Context) -> Record:
    """Rows of the built-in generator; every step is re-evaluated, so a wrong chain never reaches training."""
    from llmhalluc.datasets.arithmetic import check_chain

    steps = list(ctx.get(row, "steps"))
    answer = str(ctx.get(row, "answer"))
    problem = check_chain(steps, answer)
    if problem:
        raise BadRow("wrong_chain", problem)
    return Record(id=_row_id(ctx, row, index), question=render_prompt(ctx.prompt, str(ctx.get(row, "question")), None),
                  steps=steps, answer=answer)


def _is_number(text: str) -> bool:
    try:
        Decimal(normalize_answer(text) or "")
    except InvalidOperation:
        return False
    return True
