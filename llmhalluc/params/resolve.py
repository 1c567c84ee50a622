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
from pathlib import Path
from typing import Any

from llmhalluc.params.errors import ParamsError
from llmhalluc.params.provided import machine
from llmhalluc.params.schema import Section, plain
from llmhalluc.params.trl_schema import TRL_CONFIGS

RESOLVED_FILE = "resolved_params.json"
_SECRETS = ("hub_token",)


def hardware_defaults(section: Section) -> dict[str, Any]:
    """Values TRL would otherwise guess wrong for this machine, for keys the user did not set.

    TrainingArguments defaults to bf16 where TRL's configs ask for it, and then
    refuses to start on a CPU; the user's explicit value is never replaced (the
    params layer already refused one this hardware cannot honour).
    """
    derived = {"use_cpu": not machine().cuda(), "bf16": machine().bf16()}
    return {k: v for k, v in derived.items() if k not in section.trl}


def trl_config(section: Section):
    """The SFTConfig / GRPOConfig the trainer gets."""
    import trl

    cls = getattr(trl, TRL_CONFIGS[section.name])
    try:
        return cls(**section.trl, **hardware_defaults(section))
    except (ValueError, TypeError) as exc:  # TRL's own __post_init__ rules (GRPO's batch arithmetic, ...)
        raise ParamsError(_rejected(section, str(exc))) from exc
    except ImportError as exc:  # e.g. `deepspeed:` set without the package installed
        raise ParamsError(f"{section.file.path}: {section.name}: a key needs a package that is not installed: "
                          f"{exc}; see the `gpu` extra in pyproject.toml") from exc


def _rejected(section: Section, message: str) -> str:
    """TRL's message on the line of the first key the user wrote that it names (else the section).

    Its rules stay TRL's (a copy would drift from the installed version); only the
    place is ours. They see this process's world size: under a multi-process
    launch the ranks apply them again with the real one, and stop the same way.
    """
    named = sorted((m.start(), key) for key in section.trl if (m := re.search(rf"\b{re.escape(key)}\b", message)))
    where = f"{section.where(named[0][1])}: {section.name}.{named[0][1]}" if named else \
        f"{section.file.path}: {section.name}"
    return f"{where}: TRL's {TRL_CONFIGS[section.name]} rejects the configuration: {message}"


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
