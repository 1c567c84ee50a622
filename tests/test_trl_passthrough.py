"""No key is lost: every settable SFTConfig / GRPOConfig field reaches the config the trainer gets.

The fields are enumerated from the installed TRL's dataclasses, not listed by
hand: for each, a valid non-default value is written into the section, the
section goes through the same load -> trl_config path the stage uses, and the
config object must carry exactly that value.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

import pytest

from llmhalluc.params import ParamsError, load_section, resolved, trl_config
from llmhalluc.params.loader import section_fields
from llmhalluc.params.sections import PROJECT_PARAMS
from llmhalluc.params.yaml12 import read_params_file
from tests.conftest import ROOT

# Fields whose non-default value cannot stand alone on a CPU-only machine, and why.
# Each must still be *refused with a params error naming it*, never dropped.
NEEDS_CONTEXT = {
    "bf16": "bf16 needs a GPU with bfloat16 support",
    "fp16": "fp16 needs a CUDA GPU",
    "tf32": "tf32 needs an Ampere GPU",
    "fp16_full_eval": "fp16 eval needs a CUDA GPU",
    "bf16_full_eval": "bf16 eval needs a GPU",
    "fsdp": "FSDP needs a distributed launch",
    "deepspeed": "needs the deepspeed package (the gpu extra)",
    "ddp_backend": "needs an initialised process group (a distributed launch)",
    "auto_find_batch_size": "GRPO refuses it (TRL): the generation batch must hold whole prompt groups",
    "use_liger_kernel": "needs the liger_kernel package (the gpu extra)",
    "use_vllm": "needs the vllm package (the gpu extra) and a CUDA GPU",
}

# A sampled value must be *valid*: semantic constraints the type cannot express.
VALID_SAMPLES = {
    "logging_steps": 7,  # float field, but TrainingArguments wants an integer above 1
    "save_steps": 50,
    "accelerator_config": {"split_batches": True},
    "liger_kernel_config": {"rope": True},
    "debug": "underflow_overflow",
    "per_device_train_batch_size": 12,  # GRPO: must stay divisible by num_generations (4)
    "num_generations": 8,  # GRPO: must divide the generation batch (8)
    "generation_batch_size": 16,
    "reward_weights": [0.5, 2.0],  # one per reward_funcs entry
}

# Keys that are only valid together with another key: (companion key, value).
COMPANIONS = {
    "dataloader_prefetch_factor": ("dataloader_num_workers", 2),
    "load_best_model_at_end": ("eval_strategy", "steps"),
    "log_completions_hub_repo": ("log_completions", True),
}


def sample_value(field_type: dict, default: Any) -> Any:
    """A valid value of the type that differs from the default; None if YAML cannot express one."""
    tag = field_type["t"]
    if tag == "union":
        for member in field_type["of"]:
            if member["t"] not in ("none", "opaque", "any"):
                value = sample_value(member, default)
                if value is not None:
                    return value
        return None
    if tag == "choice":
        others = [v for v in field_type["values"] if v != default and isinstance(v, str)]
        others = others or [v for v in field_type["values"] if v != default]
        return others[0] if others else None
    if tag == "bool":
        return not default if isinstance(default, bool) else True
    if tag == "int":
        return (default + 3) if isinstance(default, int) and not isinstance(default, bool) else 3
    if tag == "float":
        return (default + 0.25) if isinstance(default, (int, float)) and not isinstance(default, bool) else 0.5
    if tag == "str":
        return "llmhalluc-test"
    if tag == "list":
        item = sample_value(field_type["item"], None)
        return None if item is None else [item]
    if tag == "dict":
        return {"llmhalluc_test": 1}
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cases(section: str) -> list[tuple[str, Any]]:
    _project, trl = section_fields(section)
    cases = []
    for name, spec in trl.items():
        value = VALID_SAMPLES.get(name, sample_value(spec.type, spec.default))
        if value is not None:
            cases.append((name, value))
    return cases


def _write(tmp_path: Path, section: str, key: str, value: Any) -> Path:
    data = read_params_file(ROOT / "params.yaml").data
    data[section][key] = value
    if key in COMPANIONS:
        companion, companion_value = COMPANIONS[key]
        data[section][companion] = companion_value
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML 1.2
    return path


@pytest.mark.parametrize("section", ["sft", "grpo"])
def test_every_trl_field_reaches_the_config(tmp_path: Path, section: str):
    dropped, refused_badly = [], []
    cases = _cases(section)
    assert len(cases) > 100  # the enumeration really ran over TRL's dataclasses
    for name, value in cases:
        path = _write(tmp_path, section, name, value)
        try:
            config = trl_config(load_section(section, path, for_run=False))
        except Exception as exc:  # collected and reported below, all fields at once
            if not isinstance(exc, ParamsError):
                refused_badly.append(f"{name}={value!r}: {type(exc).__name__}: {exc}")
            elif name not in NEEDS_CONTEXT:
                refused_badly.append(f"{name}={value!r}: {exc}")
            elif name not in str(exc) and name != "deepspeed":
                refused_badly.append(f"{name}: refusal does not name the key: {exc}")
            continue
        got = _plain(getattr(config, name))
        if isinstance(value, dict) and not isinstance(got, dict):  # accelerator_config becomes an object
            got = {k: getattr(got, k) for k in value}
        if isinstance(value, str) and got == [value]:
            continue  # str-or-list fields (report_to): TrainingArguments stores a string as a list of one
        if got != value and not (isinstance(value, float) and got == pytest.approx(value)):
            dropped.append(f"{name}: wrote {value!r}, config has {got!r}")
    assert not dropped + refused_badly, "\n".join(dropped + refused_badly)


@pytest.mark.parametrize("section", list(PROJECT_PARAMS))
def test_every_project_key_reaches_the_stage(tmp_path: Path, section: str):
    project, _trl = section_fields(section)

    def leaves(fields, prefix=()):
        for name, spec in fields.items():
            if spec.type["t"] == "section":
                from llmhalluc.params.schema import FieldSpec

                yield from leaves({k: FieldSpec(**v) for k, v in spec.type["fields"].items()},
                                  (*prefix, name))
            else:
                yield (*prefix, name), spec

    checked = 0
    for key_path, spec in leaves(project):
        value = sample_value(spec.type, spec.default)
        if value is None or (key_path[-1] in ("model_name_or_path", "data_dir", "model_dir") and section != "prepare"):
            continue
        if key_path == ("rewards",):
            continue
        data = read_params_file(ROOT / "params.yaml").data
        node = data[section]
        for part in key_path[:-1]:
            node = node.setdefault(part, {})
        node[key_path[-1]] = value
        path = tmp_path / "params.yaml"
        path.write_text(json.dumps(data))
        try:
            loaded = load_section(section, path, for_run=False)
        except ParamsError as exc:
            # a sampled value may break a cross-field rule; the refusal must name the key
            assert ".".join((section, *key_path)) in str(exc) or key_path[-1] in str(exc), str(exc)
            continue
        got = loaded.project
        for part in key_path:
            got = getattr(got, part)
        assert got == value, f"{section}.{'.'.join(key_path)}: wrote {value!r}, stage sees {got!r}"
        out = resolved(loaded) if section not in ("sft", "grpo") else dataclasses.asdict(loaded.project)
        node = out
        for part in key_path:
            node = node[part]
        assert node == value
        checked += 1
    assert checked >= 2
