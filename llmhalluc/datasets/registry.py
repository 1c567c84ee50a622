"""The dataset registry (configs/datasets.yaml): named sources with their converter and prompt.

In the spirit of LLaMA-Factory's dataset_info.json: params pick entries by
name (`prepare.train`, `prepare.eval`), the registry says where the rows come
from and how to read them. Entries are checked with the same machinery as
params.yaml, so a typo in the registry is reported with its file:line and the
nearest valid key, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmhalluc.datasets.converters import CONVERTERS, PLACEHOLDER
from llmhalluc.errors import ParamsError
from llmhalluc.params.provided import provide
from llmhalluc.params.schema import check_dataclass, nearest
from llmhalluc.params.sections import param
from llmhalluc.params.yaml12 import ParamsFile, read_params_file

#: Local file formats a source may name, by suffix, and the `datasets` builder that reads each.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Source:
    """Where rows come from: exactly one of hub, path or builtin."""

    hub: str | None = param(None, "Hugging Face Hub dataset id, e.g. openai/gsm8k")
    subset: str | None = param(None, "Hub config name (subset), e.g. main")
    split: str = param("train", "split to read from a hub or builtin source")
    revision: str | None = param(None, "Hub revision (branch, tag or commit) to pin")
    path: str | None = param(None, "local .jsonl / .json / .parquet / .csv file, relative to the repo root")
    builtin: str | None = param(None, "built-in generator name (arithmetic)")
    obtain: str = param("", "how to get a local file that is missing (shown when prepare cannot find it)")

    def describe(self) -> str:
        if self.hub:
            subset = f"/{self.subset}" if self.subset else ""
            return f"hub:{self.hub}{subset}[{self.split}]"
        if self.path:
            return self.path
        return f"builtin:{self.builtin}[{self.split}]"


@dataclass
class DatasetEntry:
    """One registry entry: a source, the converter that makes canonical records, and the prompt."""

    source: Source = param(Source(), "where the rows come from")
    converter: str = param("", "converter that turns a row into a record (gsm8k, squad_v2, generic, arithmetic)")
    columns: dict[str, str] = param({}, "canonical field -> column name in the source, where they differ")
    prompt: str = param("{question}", "user message template; placeholders: {question}, {context}")
    description: str = param("", "what this dataset is, for people reading the registry")


def load_registry(path: str | Path) -> tuple[dict[str, DatasetEntry], ParamsFile]:
    """Every entry of the registry file, validated; a problem anywhere is a ParamsError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: dataset registry not found (prepare.registry names it)")
    file = read_params_file(path)
    entries: dict[str, DatasetEntry] = {}
    problems: list[str] = []
    for name, raw in file.data.items():
        try:
            entry = check_dataclass(DatasetEntry, raw, (name,), file)
        except ParamsError as exc:
            problems.extend(exc.problems)
            continue
        problems.extend(_entry_problems(name, entry, file, CONVERTERS))
        entries[name] = entry
    if problems:
        raise ParamsError(problems)
    return entries, file


provide("dataset_registry", load_registry)  # the params layer checks prepare.train / prepare.eval against it


def _entry_problems(name: str, entry: DatasetEntry, file: ParamsFile, converters: dict) -> list[str]:
    problems = []
    source = entry.source
    kinds = [k for k in ("hub", "path", "builtin") if getattr(source, k)]
    if len(kinds) != 1:
        problems.append(f"{file.where((name, 'source'))}: {name}.source: give exactly one of hub, path, builtin"
                        f" (got {', '.join(kinds) or 'none'})")
    if source.path and Path(source.path).suffix not in LOCAL_FORMATS:
        problems.append(f"{file.where((name, 'source', 'path'))}: {name}.source.path: {source.path!r} is not one of "
                        f"{', '.join(LOCAL_FORMATS)}")
    if entry.converter not in converters:
        close = nearest(entry.converter, converters)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        problems.append(f"{file.where((name, 'converter'))}: {name}.converter: unknown converter "
                        f"{entry.converter!r} ({hint}converters: {', '.join(converters)})")
    else:
        fields = converters[entry.converter].fields
        for field in entry.columns:
            if field not in fields:
                close = nearest(field, fields)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                problems.append(f"{file.where((name, 'columns', field))}: {name}.columns.{field}: converter "
                                f"{entry.converter} reads no field {field!r} ({hint}fields: {', '.join(fields)})")
    for placeholder in PLACEHOLDER.findall(entry.prompt):
        if placeholder not in ("question", "context"):
            problems.append(f"{file.where((name, 'prompt'))}: {name}.prompt: unknown placeholder "
                            f"{{{placeholder}}} (valid: {{question}}, {{context}})")
    return problems
