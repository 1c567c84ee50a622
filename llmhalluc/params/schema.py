"""Field schemas: one small, JSON-serialisable type language for every key we accept.

TRL's config dataclasses and the project's own params classes are both turned
into this form, so a single checker validates a whole section and the TRL part
can be cached as JSON (importing TRL costs ~5 s; an error must show in < 2 s).

A type is a dict with a tag "t":
  int, float, bool, str, none, any
                         int and float may carry bounds (low, high, low_open,
                         high_open); str may carry a check (the name a check
                         is provided under, see provided.py)
  list {item}            dict {value}          (keys are always strings in YAML)
  choice {values}        Literal, Enum, or the allowed values TRL documents
  union {of}             Optional[X], X | Y
  section {fields}       a nested params class: unknown keys inside are errors
  opaque {name}          a Python object that YAML cannot express; only its default
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, Union

from llmhalluc.params.errors import ParamsError
from llmhalluc.params.provided import provided
from llmhalluc.params.yaml12 import KeyPath, ParamsFile

Type = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What one key accepts and its default (the default TRL fills in for a key the user left out)."""

    type: Type
    default: Any


def describe_type(hint: Any, nested_sections: bool = True) -> Type:
    """Translate a typing hint into the schema type language.

    Nested dataclasses become sections only for the project's own params classes
    (nested_sections); inside TRL's configs they are objects the trainer expects
    built (accelerate's ParallelismConfig), which YAML cannot give.
    """
    if hint is Any:
        return {"t": "any"}
    if hint is type(None) or hint is None:
        return {"t": "none"}
    if hint is bool:
        return {"t": "bool"}
    if hint is int:
        return {"t": "int"}
    if hint is float:
        return {"t": "float"}
    if hint is str:
        return {"t": "str"}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return _union([describe_type(a, nested_sections) for a in args])
    if origin is Literal:
        return {"t": "choice", "values": list(args)}
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        item = describe_type(args[0], nested_sections) if args else {"t": "any"}
        return {"t": "list", "item": item}
    if origin is dict or hint is dict:
        value = describe_type(args[1], nested_sections) if len(args) == 2 else {"t": "any"}
        return {"t": "dict", "value": value}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"t": "choice", "values": [m.value for m in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and nested_sections:
        return {"t": "section", "fields": {k: dataclasses.asdict(v) for k, v in describe_dataclass(hint).items()}}
    return {"t": "opaque", "name": getattr(hint, "__name__", str(hint))}


def _union(members: list[Type]) -> Type:
    # An Enum next to `str` (TrainingArguments' `SchedulerType | str`) means "a
    # string naming a member", so the choice wins over free text. A Literal of
    # non-strings beside `str` (`str | Literal[False]`) leaves the text free.
    if any(m["t"] == "choice" and all(isinstance(v, str) for v in m["values"]) for m in members):
        members = [m for m in members if m["t"] != "str"]
    flat: list[Type] = []
    for m in members:
        flat.extend(m["of"] if m["t"] == "union" else [m])
    return flat[0] if len(flat) == 1 else {"t": "union", "of": flat}


def plain(value: Any) -> Any:
    """A value as JSON data: enums by value, paths and dataclasses spelled out, containers walked, and an
    object JSON cannot hold as its repr. Both a field's cached default and the resolved JSON go through it,
    so the two spell a value the same way."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return plain(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return plain(f.default_factory())
    return None


def describe_dataclass(cls: type, nested_sections: bool = True) -> dict[str, FieldSpec]:
    """Every init field of a dataclass with its type and default."""
    hints = typing.get_type_hints(cls)
    specs: dict[str, FieldSpec] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        field_type = describe_type(hints[f.name], nested_sections)
        if "choices" in f.metadata:
            field_type = with_choices(field_type, list(f.metadata["choices"]))
        field_type = _with_limits(field_type, f.metadata.get("bounds"), f.metadata.get("check"))
        specs[f.name] = FieldSpec(field_type, field_default(f))
    return specs


def with_choices(field_type: Type, values: list[Any]) -> Type:
    """Replace the free `str` in a type by a closed set of values."""
    choice = {"t": "choice", "values": values}
    if field_type["t"] == "str":
        return choice
    if field_type["t"] == "union":
        return _union([choice if m["t"] == "str" else m for m in field_type["of"]])
    return field_type


def _with_limits(field_type: Type, bounds: dict[str, Any] | None, check: str | None) -> Type:
    """The type with a field's bounds on its numbers and its check on its strings (union members too)."""
    if field_type["t"] == "union":
        return {"t": "union", "of": [_with_limits(m, bounds, check) for m in field_type["of"]]}
    if field_type["t"] in ("int", "float") and bounds and (bounds["low"] is not None or bounds["high"] is not None):
        return {**field_type, **bounds}
    if field_type["t"] == "str" and check:
        return {**field_type, "check": check}
    return field_type


def _limit_problem(t: Type, value: Any) -> str | None:
    """Why a number is outside its type's bounds, or a string fails its check; None when it fits."""
    if t["t"] == "str":  # a check by name (the name travels in the JSON schema): why the value cannot serve
        return provided(t["check"])(value) if "check" in t else None
    low, high = t.get("low"), t.get("high")
    if (low is None or (value > low if t["low_open"] else value >= low)) and \
            (high is None or (value < high if t["high_open"] else value <= high)):  # nan fits no bound
        return None
    if high is None:
        wanted = f"{'>' if t['low_open'] else '>='} {low}"
    elif low is None:
        wanted = f"{'<' if t['high_open'] else '<='} {high}"
    elif t["t"] == "int" and not (t["low_open"] or t["high_open"]):
        wanted = f"in {low}..{high}"
    else:
        wanted = f"in {'(' if t['low_open'] else '['}{low}, {high}{')' if t['high_open'] else ']'}"
    return f"must be {wanted}, got {_show(value)}"


class Mismatch(Exception):
    """A value does not fit its type; the message is about the value, the caller adds the key path."""


def type_name(t: Type) -> str:
    tag = t["t"]
    if tag == "union":
        return " or ".join(type_name(m) for m in t["of"])
    if tag == "list":
        return f"list of {type_name(t['item'])}"
    if tag == "dict":
        return "mapping"
    if tag == "choice":
        return "one of " + ", ".join(_show(v) for v in t["values"])
    if tag == "section":
        return "mapping"
    if tag == "none":
        return "null"
    if tag == "opaque":
        return f"{t['name']} (cannot be set from YAML)"
    return tag


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def describe_value(value: Any) -> str:
    kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}.get(type(value))
    kind = kind or type(value).__name__
    return "null" if value is None else f"{kind} {_show(value)}"


def nearest(name: str, candidates: typing.Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def coerce(t: Type, value: Any) -> Any:
    """Return value converted to t (only int -> float widens), or raise Mismatch.

    Sections are not handled here: the section walker owns unknown-key reporting.
    """
    tag = t["t"]
    if tag == "any":
        return value
    if tag == "none":
        if value is None:
            return None
    elif tag == "bool":
        if isinstance(value, bool):
            return value
    elif tag in ("int", "float", "str"):
        python = {"int": int, "float": (int, float), "str": str}[tag]
        if isinstance(value, python) and not isinstance(value, bool):
            if problem := _limit_problem(t, value):
                raise Mismatch(problem)
            return float(value) if tag == "float" else value
    elif tag == "choice":
        if any(value == v and type(value) is type(v) for v in t["values"]):
            return value
        hint = ""
        if isinstance(value, str):
            close = nearest(value, [v for v in t["values"] if isinstance(v, str)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise Mismatch(f"{_show(value)} is not allowed; valid: {', '.join(_show(v) for v in t['values'])}{hint}")
    elif tag == "list":
        if isinstance(value, list):
            out = []
            for index, item in enumerate(value):
                try:
                    out.append(coerce(t["item"], item))
                except Mismatch as exc:
                    raise Mismatch(f"item {index}: {exc}") from None
            return out
    elif tag == "dict":
        if isinstance(value, dict):
            out_map = {}
            for key, item in value.items():
                try:
                    out_map[key] = coerce(t["value"], item)
                except Mismatch as exc:
                    raise Mismatch(f"key {key!r}: {exc}") from None
            return out_map
    elif tag == "union":
        errors = []
        for member in t["of"]:
            try:
                return coerce(member, value)
            except Mismatch as exc:
                errors.append((member, exc))
        # The helpful message is the member the value was clearly meant for: a string
        # against a closed set of values, a list / mapping whose item is wrong, or a
        # number (a string) of the member's own kind that its bounds (check) refuse.
        for member, exc in errors:
            if member["t"] == "choice" and isinstance(value, str):
                raise exc
            if (member["t"], type(value)) in (("list", list), ("dict", dict), ("int", int), ("float", float),
                                              ("float", int), ("str", str)):  # the right kind, out of bounds
                raise exc
    elif tag == "opaque":
        raise Mismatch(f"{t['name']} cannot be set from YAML; leave the key out")
    raise Mismatch(f"expected {type_name(t)}, got {describe_value(value)}")


@dataclass
class Section:
    """A validated section: the project's keys as a typed object, TRL's keys as the user set them."""

    name: str
    project: Any
    trl: dict[str, Any]
    trl_fields: dict[str, FieldSpec]
    file: ParamsFile

    def where(self, *key: str | int) -> str:
        return self.file.where((self.name, *key))

    def problem(self, *key: str | int, message: str, index: bool = True) -> str:
        """One problem as every check writes it: `file:line: section.key.path: message`, list items as [i]
        (index False: named by their list, on their own line)."""
        dotted = self.name + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key
                                     if index or not isinstance(k, int))
        return f"{self.where(*key)}: {dotted}: {message}"


def check_dataclass(cls: type, data: Any, key_path: KeyPath, file: ParamsFile) -> Any:
    """Validate a mapping from any YAML file against a params class and build it, or raise every problem.

    The dataset registry (configs/datasets.yaml) goes through this too, so its
    entries get the same unknown-key suggestions and file:line as params.yaml.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        dotted = ".".join(map(str, key_path))
        raise ParamsError(f"{file.where(key_path)}: {dotted}: expected a mapping of keys, got {type(data).__name__}")
    values = check_mapping(describe_dataclass(cls), data, key_path, file, problems)
    if problems:
        raise ParamsError(problems)
    return build(cls, values)


def check_mapping(
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
    if "section" in (field_type["t"], field_type.get("value", {}).get("t")):  # a section, or a mapping of them
        if not isinstance(value, dict):
            problems.append(f"{file.where(key_path)}: {dotted}: expected a mapping, got {type(value).__name__}")
            return None
        if field_type["t"] == "section":
            nested = {k: FieldSpec(**v) for k, v in field_type["fields"].items()}
            return check_mapping(nested, value, key_path, file, problems)
        return {k: _check_value(field_type["value"], v, (*key_path, k), file, problems) for k, v in value.items()}
    try:
        return coerce(field_type, value)
    except Mismatch as exc:
        problems.append(f"{file.where(key_path)}: {dotted}: {exc}")
        return None


def build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a params class from checked values, building nested classes too."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint, value = hints[f.name], values[f.name]
        if dataclasses.is_dataclass(hint):
            value = build(hint, value)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            value = {k: build(typing.get_args(hint)[1], v) for k, v in value.items()}
        kwargs[f.name] = value
    return cls(**kwargs)
