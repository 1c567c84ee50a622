"""Ctrl-C and the end of a stage: one line that says what happens next, exit code 130; a stage that finishes
says how long it took.

The interrupt tests send SIGINT to a real stage process (what a terminal's Ctrl-C sends), as
tests/test_train_sft.py's kill -9 test does with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmhalluc.checkpoints import checkpoints, is_complete
from llmhalluc.stage import INTERRUPTED_EXIT_CODE, duration, what_resumes
from tests.conftest import ROOT
from tests.tiny_project import TINY, run, write_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project where prepare has run (data/prepared), for train_sft to start from."""
    folder = tmp_path_factory.mktemp("interrupt")
    run("prepare", "prepare", folder)
    return folder


def start(stage: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)


def test_ctrl_c_in_training_names_the_checkpoint_dvc_repro_resumes_from(prepared: Path):
    write_params(prepared, {**TINY, "sft.max_steps": 2000, "sft.save_steps": 2})
    proc = start("train_sft", prepared)
    deadline = time.monotonic() + 300
    while not any(is_complete(c) for c in checkpoints(prepared / "checkpoints/sft")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    _, stderr = interrupt(proc)

    assert proc.returncode == INTERRUPTED_EXIT_CODE == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"train_sft: interrupted; `dvc repro` resumes from checkpoints/sft/checkpoint-\d+", last), last
    newest = [c for c in checkpoints(prepared / "checkpoints/sft") if is_complete(c)][-1]
    assert last.endswith(str(newest.relative_to(prepared)))
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]


def test_ctrl_c_in_another_stage_says_it_runs_again(prepared: Path, tmp_path: Path):
    """eval, interrupted while it evaluates its first model: no checkpoint to name."""
    (tmp_path / "data").symlink_to(prepared / "data")
    write_params(tmp_path, {**TINY, "eval.models": {"sft": "models/sft"}})
    from tests.test_eval_stage import build_model

    build_model(tmp_path / "models" / "sft", seed=0)
    proc = start("eval", tmp_path)
    first = proc.stdout.readline()  # the stage is at work: it names the model it evaluates
    assert first.startswith("eval: sft (models/sft)"), first + proc.communicate()[1][-3000:]
    _, stderr = interrupt(proc)

    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == \
        "eval: interrupted; `dvc repro` runs eval again (its earlier outs are as they were)"
    assert "Traceback" not in stderr


def test_a_finished_stage_says_how_long_it_took(tmp_path: Path):
    write_params(tmp_path, TINY)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"prepare: done in \d+\.\d s", done.stdout.strip().splitlines()[-1])


def test_what_resumes_is_the_last_complete_checkpoint(tmp_path: Path):
    from types import SimpleNamespace

    section = SimpleNamespace(trl={"output_dir": str(tmp_path / "ckpt")},
                              trl_fields={"output_dir": SimpleNamespace(default="trainer_output")})
    assert what_resumes("train_sft", section) == \
        f"no checkpoint in {tmp_path / 'ckpt'} yet: `dvc repro` starts train_sft from the beginning"
    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6 was being written
        folder = tmp_path / "ckpt" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            for name in ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt"):
                (folder / name).write_text("{}")
    assert what_resumes("train_sft", section) == f"`dvc repro` resumes from {tmp_path / 'ckpt' / 'checkpoint-4'}"
    assert what_resumes("merge", None) == "`dvc repro` runs merge again (its earlier outs are as they were)"


@pytest.mark.parametrize(("seconds", "text"), [(8.24, "8.2 s"), (59.94, "59.9 s"), (185, "3 min 05 s"),
                                               (3725, "1 h 02 min")])
def test_durations_read_as_a_person_writes_them(seconds, text):
    assert duration(seconds) == text
