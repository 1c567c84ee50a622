"""Two CPU processes through accelerate, from a params change alone: train_sft, train_grpo, then merge and eval.

The stages are started as scripts (`python stages/<stage>.py`; dvc.yaml's `python -m stages.<stage>` relaunches
as a module, tests/test_launcher.py); `launcher.kind: accelerate` makes each relaunch itself on two gloo processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, run_stage_script
from tests.tiny_project import TINY, write_params

TWO_PROCESSES = {"kind": "accelerate", "config_file": "configs/accelerate/cpu_2proc.yaml", "num_processes": 2}


def _run(stage: str, folder: Path) -> str:
    result = run_stage_script(stage, folder)
    assert result.returncode == 0, f"{stage} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def _first_batches(model_dir: Path) -> dict[int, str]:
    """rank -> fingerprint of the first batch that rank trained on, as the model's lineage records it.

    Read from the outs, not the log: two processes share one stream, and a log line of
    one rank can arrive cut in two by the other's (tests/test_distributed.py once failed so).
    """
    shards = json.loads((model_dir / "lineage.json").read_text())["shards"]
    assert all(s["world_size"] == 2 and s["examples"] > 0 for s in shards.values())
    return {int(rank): s["fingerprint"] for rank, s in shards.items()}


def test_two_cpu_processes_train_sft_and_grpo_into_normal_outs(tmp_path: Path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    edits = {**TINY, "sft.launcher": TWO_PROCESSES, "grpo.launcher": TWO_PROCESSES,
             # per process 4 completions; x 2 processes = a generation batch of 8 = 4 prompts x 2 generations
             "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2, "grpo.max_steps": 2,
             "eval.batch_size": 8}
    write_params(tmp_path, edits)
    _run("prepare", tmp_path)

    log = _run("train_sft", tmp_path)
    assert "launching 2 processes" in log
    assert "sft: rank 0 of world size 2" in log and "sft: rank 1 of world size 2" in log
    batches = _first_batches(tmp_path / "models" / "sft")
    assert set(batches) == {0, 1} and batches[0] != batches[1]  # each rank trained on its own shard

    log = _run("train_grpo", tmp_path)
    assert "grpo: rank 0 of world size 2" in log and "grpo: rank 1 of world size 2" in log
    batches = _first_batches(tmp_path / "models" / "grpo")
    assert set(batches) == {0, 1} and batches[0] != batches[1]

    resolved = json.loads((tmp_path / "models" / "grpo" / "resolved_params.json").read_text())
    assert resolved["launcher"]["num_processes"] == 2
    assert not list((tmp_path / "models").glob(".*.tmp"))  # only rank 0 published, nothing left half-written
    assert not (tmp_path / "checkpoints" / "grpo" / "shards").exists()  # the ranks' records moved into lineage

    _run("merge", tmp_path)
    _run("eval", tmp_path)
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert set(metrics) >= {"sft", "grpo"} and metrics["grpo"]["examples"] == TINY["prepare.sizes.eval"]
