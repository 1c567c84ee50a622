"""Reading the raw rows of a registry source: a Hub dataset, a local file, or a built-in generator.

Every row comes with a location a person can open: `data/raw/x.jsonl:12`,
`hub:openai/gsm8k/main[train] row 7`. JSON Lines are read line by line here
(not through pyarrow) so a malformed line is reported with its line number;
Parquet, CSV and Hub sets go through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhalluc.datasets.registry import LOCAL_FORMATS, Source
from llmhalluc.errors import DataError
from llmhalluc.params.sections import ArithmeticParams


@dataclass
class RawRow:
    location: str
    index: int
    #: None when the line could not even be parsed; `problem` then says why
    data: dict[str, Any] | None
    problem: str | None = None


def read_rows(source: Source, *, arithmetic: ArithmeticParams, rng: random.Random, wanted: int,
              declared: str = "") -> list[RawRow]:
    """All rows of a file or hub split; for a generator, enough rows for `wanted` distinct questions.

    `declared` says where the source is named (its registry entry and line), for a file that is not there.
    """
    if source.builtin:
        return _generated(source, arithmetic, rng, wanted)
    if source.path:
        path = Path(source.path)
        if not path.is_file():  # offline, a local copy is the only way in: say how to make one
            raise DataError(f"{path}: source file not found" + (f" ({declared})" if declared else "")
                            + (f"; {source.obtain}" if source.obtain else ""))
        if path.suffix == ".jsonl":
            return list(_jsonl(path))
        if path.suffix == ".json":
            return _json(path)
        if path.suffix == ".csv" and not _has_data_line(path):
            return []  # `datasets` fails on a header-only CSV with an obscure message; it is an empty source
        return _with_datasets(LOCAL_FORMATS[path.suffix], {"data_files": str(path), "split": "train"}, str(path))
    kwargs = {"path": source.hub, "name": source.subset, "split": source.split, "revision": source.revision}
    return _with_datasets(None, kwargs, f"hub:{source.hub}{'/' + source.subset if source.subset else ''}"
                                        f"[{source.split}]")


def _jsonl(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line.rstrip("\r\n"))  # so a column past the end is on this line, not the next
            except json.JSONDecodeError as exc:
                yield RawRow(where, number, None, f"malformed JSON ({_json_problem(exc)} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                yield RawRow(where, number, None, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield RawRow(where, number, data)


def _json(path: Path) -> list[RawRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({_json_problem(exc)} at column {exc.colno})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return [RawRow(f"{path}[{i}]", i, row) if isinstance(row, dict)
            else RawRow(f"{path}[{i}]", i, None, f"expected a JSON object, got {type(row).__name__}")
            for i, row in enumerate(data)]


def _json_problem(exc: json.JSONDecodeError) -> str:
    """The decoder's reason without its dangling "at" ("Unterminated string starting at"): the caller says where."""
    return exc.msg.removesuffix(" at")


def _has_data_line(path: Path) -> bool:
    """Whether a CSV has a line after its header (read only as far as that line)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        lines = (line for line in handle if line.strip())
        next(lines, None)
        return next(lines, None) is not None


def _with_datasets(builder: str | None, kwargs: dict[str, Any], label: str) -> list[RawRow]:
    from datasets import load_dataset
    from datasets.exceptions import DatasetsError

    try:
        dataset = load_dataset(builder, **kwargs) if builder else load_dataset(**kwargs)
    except (OSError, ValueError, DatasetsError) as exc:  # unreachable hub, missing split, unparsable file
        # A parse failure arrives as DatasetGenerationError("An error occurred while generating the
        # dataset"); the parser's own message (pandas: "Expected 2 fields in line 3, saw 3") is its cause.
        cause = exc.__cause__ if isinstance(exc, DatasetsError) and exc.__cause__ is not None else exc
        raise DataError(f"{label}: cannot load ({type(cause).__name__}: {str(cause).strip()})") from exc
    # CSV counts a header line; report the line a spreadsheet shows.
    offset = 2 if builder == "csv" else 0
    where = (lambda i: f"{label}:{i + offset}") if builder == "csv" else (lambda i: f"{label} row {i}")
    return [RawRow(where(i), i, row) for i, row in enumerate(dataset)]


def _generated(source: Source, params: ArithmeticParams, rng: random.Random, wanted: int) -> list[RawRow]:
    from llmhalluc.datasets import arithmetic

    generators = {"arithmetic": arithmetic.generate}
    if source.builtin not in generators:
        raise DataError(f"builtin:{source.builtin}: no such generator (generators: {', '.join(generators)})")
    rows, seen = [], set()
    stream = generators[source.builtin](params, rng)
    # A small problem space runs out of distinct questions; stop after enough misses instead of looping forever.
    misses = 0
    while len(rows) < wanted and misses < 20 * wanted + 1000:
        row = next(stream)
        if row["question"] in seen:
            misses += 1
            continue
        seen.add(row["question"])
        rows.append(RawRow(f"builtin:{source.builtin} row {row['id']}", row["id"], row))
    return rows
