"""Faults while a stage writes its outs: the previous outs stay whole and the user reads one clear line.

A full disk is simulated with RLIMIT_FSIZE in the stage's process (SIGXFSZ
ignored, so a write past the limit fails with EFBIG exactly as a full disk's
ENOSPC would, and it works as root too). A permission error needs a user the
permission bits apply to: as root the stage's process drops the capabilities
that override them (CAP_DAC_OVERRIDE and friends) before it starts. The stage
exits 4 (llmhalluc.errors.OutputError), names the out and the reason, and
leaves no staging folder behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmhalluc.errors import OutputError
from llmhalluc.outputs import staged_output
from tests.conftest import ROOT, edit
from tests.outs import stray_staging, tree


def small_params(params_text: str, seed: int = 0) -> str:
    params = edit(params_text, "    sft: 1500 ", "    sft: 60 ")
    params = edit(params, "    grpo: 128 ", "    grpo: 10 ")
    params = edit(params, "    eval: 200 ", "    eval: 20 ")
    return edit(params, "  seed: 0                       # seed of generation", f"  seed: {seed}  # seed of generation")


#: Linux capabilities that let root ignore permission bits (capability.h): DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER.
_OVERRIDE_CAPS = (1, 2, 3)
_PR_CAPBSET_DROP = 24


def _drop_permission_override() -> None:
    """In the child, before exec: take away root's power to ignore permission bits (no-op for other users).

    Dropped from the bounding set, the capabilities are gone from the process
    that exec starts, so a uid-0 stage meets the permission bits like any owner.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _OVERRIDE_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def run(stage: str, cwd: Path, *, max_file_bytes: int | None = None, respect_permissions: bool = False):
    """Run a stage script as its own process, optionally with a file-size limit or bound by permission bits."""

    def before_exec() -> None:
        if respect_permissions:
            _drop_permission_override()
        if max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    try:
        return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=cwd,
                              capture_output=True, text=True, timeout=600, preexec_fn=before_exec)
    except subprocess.SubprocessError as exc:  # preexec_fn failed: the container forbids dropping capabilities
        pytest.skip(f"cannot make permission bits apply to root here: {exc}")


def prepared_workspace(work: Path, params_text: str) -> Path:
    """A workspace where prepare ran once: data/prepared and metrics/prepare.json are the earlier outs."""
    (work / "configs").mkdir(exist_ok=True)
    shutil.copy(ROOT / "configs" / "datasets.yaml", work / "configs" / "datasets.yaml")
    (work / "params.yaml").write_text(small_params(params_text))
    result = run("prepare", work)
    assert result.returncode == 0, result.stderr
    # The next run would write different outs, so an accidental partial write could not pass as the old ones.
    (work / "params.yaml").write_text(small_params(params_text, seed=1))
    return work


def assert_clean_failure(result: subprocess.CompletedProcess, out: str, reason: str) -> None:
    assert result.returncode == OutputError.exit_code == 4, result.stderr
    assert f"error: {out}: could not write the stage's outs ({reason}" in result.stderr, result.stderr
    assert f"the previous {out} is left as it was" in result.stderr
    assert "Traceback" not in result.stderr


def test_disk_full_while_prepare_writes_leaves_the_previous_outs(tmp_path: Path, params_text: str):
    work = prepared_workspace(tmp_path, params_text)
    before = tree(work / "data") | tree(work / "metrics")
    assert (work / "data" / "prepared" / "sft.jsonl").stat().st_size > 8192

    result = run("prepare", work, max_file_bytes=8192)

    assert_clean_failure(result, "data/prepared", "File too large")
    assert tree(work / "data") | tree(work / "metrics") == before
    assert stray_staging(work) == []
    # Nothing left over blocks the next run once there is room again.
    assert run("prepare", work).returncode == 0
    assert tree(work / "data") != before


def test_disk_full_while_merge_saves_weights_leaves_the_previous_model(tmp_path: Path, params_text: str):
    from llmhalluc.tiny_model import build_tiny_model

    work = tmp_path
    build_tiny_model(work / "models" / "grpo", ["1 + 2 = 3. The answer is 3."] * 8, vocab_size=300,
                     hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    merged = work / "models" / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"the earlier merged weights")
    (merged / "config.json").write_text('{"earlier": true}\n')
    (work / "params.yaml").write_text(params_text)
    before = tree(merged)
    assert (work / "models" / "grpo" / "model.safetensors").stat().st_size > 32768

    result = run("merge", work, max_file_bytes=32768)

    assert_clean_failure(result, "models/merged", "File too large")
    assert tree(merged) == before
    assert stray_staging(work) == []


def test_read_only_parent_of_the_outs_is_a_clear_error(tmp_path: Path, params_text: str):
    work = prepared_workspace(tmp_path, params_text)
    before = tree(work / "data")
    (work / "data").chmod(0o555)

    result = run("prepare", work, respect_permissions=True)

    assert_clean_failure(result, "data/prepared", "Permission denied")
    assert tree(work / "data") == before
    assert stray_staging(work) == []


def test_a_swap_that_cannot_finish_removes_its_staging_and_keeps_the_outs(tmp_path: Path, params_text: str):
    """The outs were written in full but the swap fails (a stale .prepared.old that cannot be removed)."""
    work = prepared_workspace(tmp_path, params_text)
    stale = work / "data" / ".prepared.old" / "locked"
    stale.mkdir(parents=True)
    (stale / "file").write_text("left by someone else\n")
    before = tree(work / "data")
    stale.chmod(0o555)

    result = run("prepare", work, respect_permissions=True)

    assert_clean_failure(result, "data/prepared", "Permission denied")
    assert tree(work / "data") == before
    assert [p for p in stray_staging(work) if p.endswith(".tmp")] == []


def test_an_unwritable_metrics_file_is_one_line_not_a_traceback(tmp_path: Path, params_text: str):
    """Metrics are written after the outs' swap: the run fails with exit 4 and the file named.

    The new data/prepared is in place then (the two are separate DVC outs, not one
    transaction); DVC records nothing for a failed stage, so the next repro runs it again.
    """
    work = prepared_workspace(tmp_path, params_text)
    metrics = work / "metrics" / "prepare.json"
    metrics.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    old_metrics = metrics.read_bytes()

    result = run("prepare", work, respect_permissions=True)

    assert result.returncode == 4, result.stderr
    assert "error: prepare: Permission denied: metrics/prepare.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert metrics.read_bytes() == old_metrics
    assert stray_staging(work) == []


# --- staged_output itself: the swap's failure paths, in-process -------------------------------------------


def _earlier_outs(root: Path) -> Path:
    out = root / "out"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"earlier")
    return out


def test_a_failure_inside_the_block_removes_staging_and_keeps_its_own_type(tmp_path: Path):
    out = _earlier_outs(tmp_path)
    with pytest.raises(ValueError, match="a bug"), staged_output(out) as staging:
        (staging / "weights.bin").write_bytes(b"half")
        raise ValueError("a bug")  # not a write failure: the traceback stays
    assert (out / "weights.bin").read_bytes() == b"earlier"
    assert stray_staging(tmp_path) == []


def test_a_full_disk_inside_the_block_becomes_an_output_error(tmp_path: Path):
    out = _earlier_outs(tmp_path)
    with pytest.raises(OutputError, match=r"out: could not write the stage's outs \(No space left on device"), \
            staged_output(out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (out / "weights.bin").read_bytes() == b"earlier"
    assert stray_staging(tmp_path) == []


def test_a_failed_final_rename_puts_the_previous_outs_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = _earlier_outs(tmp_path)
    real_rename = Path.rename

    def rename(self: Path, target):
        if self.name.endswith(".tmp"):  # staging -> out, after out -> .out.old succeeded
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OutputError, match="Input/output error"), staged_output(out) as staging:
        (staging / "weights.bin").write_bytes(b"new")
    assert (out / "weights.bin").read_bytes() == b"earlier"
    assert stray_staging(tmp_path) == []


def test_outs_left_mid_swap_by_a_killed_run_are_restored(tmp_path: Path):
    """A kill between `out -> .out.old` and `staging -> out` left only .out.old; the next run puts it back."""
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "weights.bin").write_bytes(b"earlier")
    with pytest.raises(ValueError), staged_output(tmp_path / "out"):
        raise ValueError("this run fails too")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == b"earlier"
    assert stray_staging(tmp_path) == []
