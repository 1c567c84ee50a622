"""Load one section of params.yaml, strictly: every key known, typed and consistent.

Order matters for speed: parse (ruamel, ~0.1 s), then the cached TRL schema
(JSON), then types and choices, then cross-field checks; torch is imported only
by the hardware checks, and only when a value asks for an accelerator. So a
typo fails in well under 2 s, before any model or data is touched.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhalluc.errors import ParamsError
from llmhalluc.params.schema import FieldSpec, Mismatch, coerce, describe_dataclass, nearest
from llmhalluc.params.sections import PROJECT_PARAMS
from llmhalluc.params.trl_schema import TRL_CONFIGS, trl_schema
from llmhalluc.params.yaml12 import KeyPath, ParamsFile, read_params_file

DEFAULT_PARAMS = Path("params.yaml")


@dataclass
class Section:
    """A validated section: the project's keys as a typed object, TRL's keys as the user set them."""

    name: str
    project: Any
    trl: dict[str, Any]
    trl_fields: dict[str, FieldSpec]
    file: ParamsFile

    def where(self, *key: str) -> str:
        return self.file.where((self.name, *key))


def section_fields(name: str) -> tuple[dict[str, FieldSpec], dict[str, FieldSpec]]:
    """(project fields, TRL fields) of a section; a name in both is a bug in this project."""
    if name not in PROJECT_PARAMS:
        raise ParamsError(f"no stage reads a section named {name!r}; sections: {', '.join(PROJECT_PARAMS)}")
    project = describe_dataclass(PROJECT_PARAMS[name])
    trl = trl_schema(name) if name in TRL_CONFIGS else {}
    clash = sorted(set(project) & set(trl))
    if clash:
        raise RuntimeError(f"project keys of {name!r} shadow TRL fields: {clash}; rename them")
    return project, trl


def load_section(name: str, params_path: str | Path = DEFAULT_PARAMS, *, for_run: bool = True) -> Section:
    """Read, type-check and cross-check one section, or raise one ParamsError listing every problem.

    for_run=False (a dry run) reports missing input paths as warnings, since a
    dry run may come before the upstream stage has produced them.
    """
    from llmhalluc.params import checks  # checks import the reward registry; keep the cycle one-way

    file = read_params_file(params_path)
    if name not in file.data:
        close = nearest(name, [str(key) for key in file.data], n=1)
        hint = f"; is {close[0]!r} at {file.where((close[0],))} a misspelling of it?" if close else ""
        raise ParamsError(f"{file.path}: no section {name!r} (the {name} stage reads only that section){hint}")
    data = file.data[name]
    if not isinstance(data, dict):
        raise ParamsError(f"{file.where((name,))}: {name}: expected a mapping of keys, got {type(data).__name__}")
    project_fields, trl_fields = section_fields(name)
    problems: list[str] = []
    all_fields = {**project_fields, **trl_fields}
    values = _check_mapping(all_fields, data, (name,), file, problems)
    if problems:
        raise ParamsError(problems)
    project = _build(PROJECT_PARAMS[name], {k: v for k, v in values.items() if k in project_fields})
    trl = {k: v for k, v in values.items() if k in trl_fields}
    section = Section(name, project, trl, trl_fields, file)
    checks.check(section, for_run=for_run)
    return section


def check_dataclass(cls: type, data: Any, key_path: KeyPath, file: ParamsFile) -> Any:
    """Validate a mapping from any YAML file against a params class and build it, or raise every problem.

    The dataset registry (configs/datasets.yaml) goes through this too, so its
    entries get the same unknown-key suggestions and file:line as params.yaml.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        dotted = ".".join(map(str, key_path))
        raise ParamsError(f"{file.where(key_path)}: {dotted}: expected a mapping of keys, got {type(data).__name__}")
    values = _check_mapping(describe_dataclass(cls), data, key_path, file, problems)
    if problems:
        raise ParamsError(problems)
    return _build(cls, values)


def _check_mapping(
    fields: dict[str, FieldSpec], data: dict[str, Any], path: KeyPath, file: ParamsFile, problems: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        key_path = (*path, key)
        dotted = ".".join(map(str, key_path))
        if key not in fields:
            close = nearest(key, fields)
            if close:
                hint = f" (did you mean {' or '.join('.'.join((*map(str, path), c)) for c in close)}?)"
            elif len(path) > 1:  # a small nested section: listing its keys is the best hint
                hint = f" (valid keys: {', '.join(fields)})"
            else:
                hint = ""
            problems.append(f"{file.where(key_path)}: {dotted}: unknown key{hint}")
            continue
        out[key] = _check_value(fields[key].type, value, key_path, file, problems)
    return out


def _check_value(field_type: dict, value: Any, key_path: KeyPath, file: ParamsFile, problems: list[str]) -> Any:
    dotted = ".".join(map(str, key_path))
    if field_type["t"] == "section":
        if not isinstance(value, dict):
            problems.append(f"{file.where(key_path)}: {dotted}: expected a mapping, got {type(value).__name__}")
            return None
        nested = {k: FieldSpec.from_json(v) for k, v in field_type["fields"].items()}
        return _check_mapping(nested, value, key_path, file, problems)
    if field_type["t"] == "dict" and field_type["value"]["t"] == "section":
        if not isinstance(value, dict):
            problems.append(f"{file.where(key_path)}: {dotted}: expected a mapping, got {type(value).__name__}")
            return None
        return {k: _check_value(field_type["value"], v, (*key_path, k), file, problems) for k, v in value.items()}
    try:
        return coerce(field_type, value)
    except Mismatch as exc:
        problems.append(f"{file.where(key_path)}: {dotted}: {exc}")
        return None


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a params class from checked values, building nested classes too."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint, value = hints[f.name], values[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            value = {k: _build(typing.get_args(hint)[1], v) for k, v in value.items()}
        kwargs[f.name] = value
    return cls(**kwargs)
