"""The launcher: params choose accelerate, the command is built from them, and impossible setups fail early."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmhalluc.launcher import accelerate_command
from llmhalluc.params.sections import LauncherParams
from tests.conftest import ROOT, edit, run_stage_script

PYTHON_LAUNCHER = "    kind: python                # python: this process | accelerate: accelerate launch\n"


def test_each_launch_gets_its_own_free_port_unless_params_pin_one():
    launcher = LauncherParams(kind="accelerate", num_processes=2,
                              config_file=str(ROOT / "configs/accelerate/cpu_2proc.yaml"))
    first, second = (accelerate_command(launcher, "stages/train_sft.py", ["--params", "p.yaml"]) for _ in range(2))
    port = first.index("--main_process_port") + 1
    assert first[first.index("--num_processes") + 1] == "2"
    assert first[-3:] == ["stages/train_sft.py", "--params", "p.yaml"]
    assert int(first[port]) != int(second[port])  # two queued experiments never share a rendezvous port

    launcher.main_process_port = 29555
    assert "29555" in accelerate_command(launcher, "s.py", [])
    # Several machines must agree on one port: the shared config's, never a local free one.
    multi = LauncherParams(kind="accelerate", num_processes=16,
                           config_file=str(ROOT / "configs/accelerate/multi_node_zero3.yaml"))
    assert "--main_process_port" not in accelerate_command(multi, "s.py", [])


CASES = [
    (PYTHON_LAUNCHER, PYTHON_LAUNCHER + "    config_file: configs/accelerate/cpu_2proc.yaml\n",
     "sft.launcher.config_file: read only with launcher.kind: accelerate"),
    (PYTHON_LAUNCHER, "    kind: accelerate\n", "sft.launcher.kind: accelerate needs launcher.config_file (shipped: "),
    (PYTHON_LAUNCHER, "    kind: accelerate\n    config_file: configs/accelerate/nope.yaml\n",
     "sft.launcher.config_file: no such file 'configs/accelerate/nope.yaml'"),
    (PYTHON_LAUNCHER, "    kind: accelerate\n    config_file: configs/accelerate/fsdp.yaml\n",
     "(FSDP) needs CUDA GPUs and this machine has none"),
    (PYTHON_LAUNCHER, "    kind: accelerate\n    config_file: configs/accelerate/cpu_2proc.yaml\n"
                      "    main_process_port: 80\n", "sft.launcher.main_process_port: must be in 1024..65535"),
]


@pytest.mark.parametrize(("old", "new", "message"), CASES)
def test_launcher_params_that_cannot_work_exit_2(tmp_path: Path, params_text: str, old: str, new: str, message: str):
    import torch

    if "CUDA" in message and torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "params.yaml").write_text(edit(params_text, old, new))
    result = run_stage_script("train_sft", tmp_path, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_deepspeed_config_without_deepspeed_is_a_params_error(tmp_path: Path, params_text: str):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "params.yaml").write_text(edit(params_text, PYTHON_LAUNCHER,
                                               "    kind: accelerate\n"
                                               "    config_file: configs/accelerate/deepspeed_zero3.yaml\n"))
    result = run_stage_script("train_sft", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "uses DeepSpeed, which is not installed (pip install -e '.[gpu]')" in result.stderr


def test_vllm_rollouts_without_vllm_or_gpu_are_a_params_error(tmp_path: Path, params_text: str):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    line = "  log_completions: false"
    (tmp_path / "params.yaml").write_text(edit(params_text, line, "  use_vllm: true\n  vllm_mode: colocate\n" + line))
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "grpo.use_vllm: true needs the vllm package, which is not installed" in result.stderr
