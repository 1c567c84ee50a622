"""`dvc repro prepare` in a copy of the repo: it runs, re-running is a no-op, only prepare's params re-run it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, edit

DVC = [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _clone(tmp_path: Path) -> Path:
    """The tracked files of the repo (as a fresh clone has them), small params, a git repo of their own."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    work = tmp_path / "repo"
    for name in files:
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    params = (work / "params.yaml").read_text()
    sizes = (("    sft: 1500 ", "    sft: 50 "), ("    grpo: 128 ", "    grpo: 8 "),
             ("    eval: 200 ", "    eval: 10 "))
    for old, new in sizes:
        params = edit(params, old, new)
    (work / "params.yaml").write_text(params)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], work)
    _run([*git, "add", "-A"], work)
    _run([*git, "commit", "-q", "-m", "clone"], work)
    return work


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_reruns_only_for_its_own_params(tmp_path: Path):
    work = _clone(tmp_path)
    out = _run([*DVC, "repro", "prepare"], work)
    assert "Running stage 'prepare'" in out
    sft = work / "data" / "prepared" / "sft.jsonl"
    first = _digest(sft)
    assert "didn't change" in _run([*DVC, "repro", "prepare"], work)

    params = (work / "params.yaml").read_text()
    params = edit(params, "  beta: 0.0 ", "  beta: 0.04 ")
    params = edit(params, "  batch_size: 64 ", "  batch_size: 32 ")
    (work / "params.yaml").write_text(params)
    out = _run([*DVC, "repro", "prepare"], work)
    assert "didn't change" in out and "Running stage 'prepare'" not in out

    (work / "params.yaml").write_text(edit(params, "  seed: 0 ", "  seed: 1 "))
    assert "prepare.seed" in _run([*DVC, "params", "diff"], work)
    out = _run([*DVC, "repro", "prepare"], work)
    assert "Running stage 'prepare'" in out
    assert _digest(sft) != first
