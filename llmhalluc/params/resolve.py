"""From a validated section to what actually runs: the TRL config object and the resolved JSON.

Only the keys the user wrote are passed to TRL, plus hardware facts the user
left open (`use_cpu`, `bf16`); every other field keeps TRL's own default. So no
layer in between can override the user, and the resolved JSON, read back off
the config object TRL built, is what the trainer received.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

from llmhalluc.params.errors import ParamsError
from llmhalluc.params.provided import machine
from llmhalluc.params.schema import Section, plain
from llmhalluc.params.trl_schema import TRL_CONFIGS

RESOLVED_FILE = "resolved_params.json"
_SECRETS = ("hub_token",)


def hardware_defaults(written: dict[str, Any]) -> dict[str, Any]:
    """Values TRL would otherwise guess wrong for this machine, for keys the user did not write.

    TrainingArguments defaults to bf16 where TRL's configs ask for it, and then
    refuses to start on a CPU; the user's explicit value is never replaced (the
    params layer already refused one this hardware cannot honour).
    """
    derived = {"use_cpu": not machine().cuda(), "bf16": machine().bf16()}
    return {k: v for k, v in derived.items() if k not in written}


#: What TRL's config classes raise for a configuration they refuse: their own __post_init__ rules (GRPO's
#: batch arithmetic, ...) and, for a key whose package is missing (`deepspeed:`), an ImportError.
_REFUSALS = (ValueError, TypeError, ImportError)


def trl_config(section: Section):
    """The SFTConfig / GRPOConfig the trainer gets."""
    import trl

    cls = getattr(trl, TRL_CONFIGS[section.name])
    try:
        return cls(**section.trl, **hardware_defaults(section.trl))
    except _REFUSALS as exc:
        raise ParamsError(_rejected(section, cls, exc)) from exc


def _rejected(section: Section, cls: type, exc: Exception) -> str:
    """TRL's message, on the line of a key the user wrote that TRL's rule reads, with the others it reads.

    Its rules stay TRL's (a copy would drift from the installed version); only the place is ours,
    found by asking TRL again with each written key left out (TRL's default, or the hardware's):
    a key without which TRL accepts the section is one to change; a key without which TRL's message
    changes is one the rejection also depends on (per_device_train_batch_size, for a
    generation_batch_size the user never wrote). The line is the first key to change that the message
    names, else the first to change, else the first named or depended on. The rules see this
    process's world size: under a multi-process launch the ranks apply them again with the real one,
    and stop the same way.
    """
    message = str(exc).strip()
    takes, follows = [], []
    for key in section.trl:
        rest = {k: v for k, v in section.trl.items() if k != key}
        try:
            with warnings.catch_warnings():  # TRL's deprecation notes, once per try
                warnings.simplefilter("ignore")
                cls(**rest, **hardware_defaults(rest))
        except _REFUSALS as other:
            if type(other) is not type(exc) or str(other) != str(exc):
                follows.append(key)
        else:
            takes.append(key)
    mentions = {key: m.start() for key in section.trl if (m := re.search(rf"\b{re.escape(key)}\b", message))}
    named = sorted(mentions, key=mentions.__getitem__)
    first = next(iter([k for k in named if k in takes] + takes + named + follows), None)

    def at(key: str) -> str:
        return f"{section.name}.{key} at {section.where(key)}"

    clauses = []
    if takes:
        clauses.append(f"TRL accepts it without {' or without '.join(map(at, takes))}")
    if others := [k for k in follows if k != first]:
        clauses.append(f"it also depends on {' and '.join(map(at, others))}")
    where = f"{section.where(first)}: {section.name}.{first}" if first else f"{section.file.path}: {section.name}"
    what = "needs a package that is not installed (see the `gpu` extra in pyproject.toml)" \
        if isinstance(exc, ImportError) else "rejects the configuration"
    because = f" ({'; '.join(clauses)})" if clauses else ""
    return f"{where}: TRL's {cls.__name__} {what}: {message.rstrip('.')}{because}"


def resolved(section: Section, config: Any | None = None) -> dict[str, Any]:
    """Every key the stage runs with, defaults included, laid out like params.yaml's section.

    For sft/grpo pass the config object the trainer gets (built if omitted): its
    fields are read back after TRL's own __post_init__ resolved them.
    """
    out = plain(dataclasses.asdict(section.project))
    if section.name in TRL_CONFIGS:
        config = config if config is not None else trl_config(section)
        for f in dataclasses.fields(config):
            if f.init and not f.name.startswith("_"):
                value = getattr(config, f.name)
                out[f.name] = "<hidden>" if f.name in _SECRETS and value is not None else plain(value)
    return out


def write_resolved(data: dict[str, Any], out_dir: str | Path) -> Path:
    """Record what ran inside the stage's outs, so what ran is never a guess."""
    path = Path(out_dir) / RESOLVED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
