"""The schema of TRL's config keys, derived from the installed TRL, cached on disk.

`sft` and `grpo` in params.yaml use SFTConfig / GRPOConfig field names as they
are. We never copy those fields by hand: a copy goes stale the day TRL adds or
renames one, and a stale copy is exactly how a key gets dropped. Instead the
schema is read off the installed dataclasses, so a field TRL adds is accepted
and one it removes is rejected.

Importing TRL takes ~5 s, and a params error must surface in under 2 s, so the
derived schema is cached as JSON, keyed by the installed trl / transformers
versions (read from package metadata, which does not import them) and by the
source of this module; any change rebuilds it.

TRL documents many closed string choices (`loss_type`, `scale_rewards`,
`vllm_mode`, ...) only in prose, with a plain `str` annotation. For fields a
TRL class declares, the allowed values are read from its docstring: a bullet
list after "Supported/Possible values are", or a run of quoted literals such as
`"token"` or `"sequence"`. A reading is kept only if it contains the default,
which guards against quoting that is an example rather than a list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from llmhalluc.params.schema import FieldSpec, describe_dataclass, with_choices

#: The TRL config class behind each training section.
TRL_CONFIGS = {"sft": "SFTConfig", "grpo": "GRPOConfig"}


def cache_dir() -> Path:
    """Where schemas are cached: $LLMHALLUC_CACHE_DIR, else $XDG_CACHE_HOME/llmhalluc."""
    explicit = os.environ.get("LLMHALLUC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmhalluc"


def cache_key() -> str:
    parts = [
        importlib.metadata.version("trl"),
        importlib.metadata.version("transformers"),
        sys.version.split()[0],
        hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12],
        hashlib.sha256((Path(__file__).parent / "schema.py").read_bytes()).hexdigest()[:12],
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def trl_schema(section: str) -> dict[str, FieldSpec]:
    """The TRL fields of `section` ("sft" or "grpo"), from cache or derived now."""
    path = cache_dir() / f"trl-schema-{cache_key()}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    if cached is None:
        cached = derive_all()
        # Written beside and renamed into place: parallel experiments may derive it at once, and a reader must
        # never see half a file (outputs.write_atomically does the same for the stages' outs; params imports
        # nothing above it).
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            part.write_text(json.dumps(cached), encoding="utf-8")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    return {name: FieldSpec(**spec) for name, spec in cached[section].items()}


def derive_all() -> dict[str, dict[str, Any]]:
    """Import TRL and describe every training section's config class."""
    import trl  # slow: only on a cache miss

    return {
        section: {name: dataclasses.asdict(spec) for name, spec in derive(getattr(trl, cls_name)).items()}
        for section, cls_name in TRL_CONFIGS.items()
    }


def derive(config_cls: type) -> dict[str, FieldSpec]:
    specs = describe_dataclass(config_cls, nested_sections=False)
    for name, spec in specs.items():
        owner = _declaring_class(config_cls, name)
        if owner is None or not owner.__module__.startswith("trl."):
            continue
        values = documented_choices(owner.__doc__ or "", name, spec.default)
        if values:
            specs[name] = FieldSpec(with_choices(spec.type, values), spec.default)
    return specs


def _declaring_class(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass
    return None


_QUOTED = r'`"([^"`]+)"`'
_BULLET_HEAD = re.compile(r"^\s*-\s+(.*?)(?::|$)", re.MULTILINE)
_RUN = re.compile(_QUOTED + r"(?:\s*(?:,|,?\s+or|,?\s+and)\s*" + _QUOTED + r")+")
_LIST_INTRO = re.compile(r"(supported values|possible\s+values|supported options|must be one of)", re.IGNORECASE)


def field_doc(doc: str, name: str) -> str:
    """The docstring entry of one field: its header line and the indented lines under it."""
    match = re.search(rf"^(\s*){re.escape(name)} ?\(", doc, re.MULTILINE)
    if not match:
        return ""
    indent = len(match.group(1))
    lines = doc[match.start() :].splitlines()
    body = [lines[0]]
    for line in lines[1:]:
        stripped = line.strip()
        if stripped and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return "\n".join(body)


def documented_choices(doc: str, name: str, default: Any) -> list[Any]:
    """Allowed values of a string field as its docstring lists them, or [] if it lists none."""
    entry = field_doc(doc, name)
    if not entry:
        return []
    values: list[Any] = []
    intro = _LIST_INTRO.search(entry)
    if intro:
        rest = entry[intro.end() :]
        heads = _BULLET_HEAD.findall(rest)
        if heads:
            for head in heads:
                values.extend(re.findall(_QUOTED, head))
                values.extend({"True": True, "False": False}[b] for b in re.findall(r"`(True|False)`", head))
        else:
            sentence = rest.split(". ")[0]
            values.extend(re.findall(_QUOTED, sentence))
    if not values:
        run = _RUN.search(entry)
        if run:
            values = re.findall(_QUOTED, run.group(0))
    unique = list(dict.fromkeys(values))
    if len([v for v in unique if isinstance(v, str)]) < 2:
        return []
    if default is not None and default not in unique:
        return []
    return unique
