"""A throwaway copy of the project for stage tests: params.yaml with edits, tiny sizes, stages run in-process.

Stages use paths relative to the repository root (data/prepared, checkpoints/sft, dvclive/...),
so a test chdirs into its own folder and gets the same layout there.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from llmhalluc.params import load_section
from tests.conftest import ROOT

#: Small enough for a few CPU seconds per stage, big enough to train something.
TINY = {
    "prepare.sizes.sft": 64, "prepare.sizes.grpo": 8, "prepare.sizes.eval": 8,
    "sft.tiny_model.vocab_size": 300, "sft.tiny_model.hidden_size": 32, "sft.tiny_model.num_layers": 1,
    "sft.tiny_model.num_heads": 2, "sft.tiny_model.intermediate_size": 64,
    "sft.max_steps": 6, "sft.per_device_train_batch_size": 4, "sft.save_steps": 2, "sft.logging_steps": 1,
    "sft.max_length": 128, "sft.lora.r": 4, "sft.lora.alpha": 8,
    "grpo.max_steps": 2, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2,
    "grpo.max_completion_length": 8, "grpo.logging_steps": 1, "grpo.save_steps": 1, "grpo.lora.r": 4,
    "grpo.lora.alpha": 8,
}


def write_params(folder: Path, edits: dict[str, Any]) -> Path:
    """The repo's params.yaml with dotted-key edits applied (a missing key is added)."""
    yaml = YAML()
    data = yaml.load((ROOT / "params.yaml").read_text())
    for dotted, value in edits.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    out = io.StringIO()
    yaml.dump(data, out)
    path = folder / "params.yaml"
    path.write_text(out.getvalue())
    return path


def stage_module(stage: str):
    spec = importlib.util.spec_from_file_location(f"stage_{stage}", ROOT / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(stage: str, section: str, folder: Path, edits: dict[str, Any] | None = None) -> None:
    """Run one stage's main() in `folder` with TINY + edits (the cwd is restored afterwards)."""
    write_params(folder, {**TINY, **(edits or {})})
    if not (folder / "configs").exists():  # the dataset registry and accelerate configs, read-only
        (folder / "configs").symlink_to(ROOT / "configs")
    before = Path.cwd()
    os.chdir(folder)
    try:
        stage_module(stage).main(load_section(section, folder / "params.yaml"))
    finally:
        os.chdir(before)
