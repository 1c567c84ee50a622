"""Reruns DVC can skip, failures that lose nothing: the tiny pipeline under real `dvc repro`, in a clone.

- A deleted out of a stage DVC has run comes back from its cache (the run-cache: no out is persisted), and
  nothing after it runs.
- The same weights rebuilt at another commit keep their folder's hash: only the stage whose code changed runs
  again, nothing after it does; the run record beside the folder names the new commit, and says clean (the
  pipeline's own writes, dvc.lock and the metrics among them, are no uncommitted change).
- A stage that fails under `dvc repro` (a params typo, a value TRL refuses, a bad data row) after DVC deleted its
  outs: `dvc checkout` brings every out of the last good run back, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.outs import tree
from tests.tiny_project import TINY, write_params

DVC = [sys.executable, "-m", "dvc"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
#: Every out the pipeline writes (dvc.yaml, default params): what `dvc checkout` must put back.
OUTS = ("data/prepared", "models", "dvclive", "metrics", "eval", "plots")
#: Rows of a local source beside the synthetic task, so that a bad row can be added to it.
ROWS = [{"question": "How many apples?", "answer": "2 + 2 = 4.\n#### 4"},
        {"question": "How many pears?", "answer": "3 + 4 = 7.\n#### 7"}]


def sh(cmd: list[str], cwd: Path, *, ok: bool = True) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ}, timeout=900)
    assert (result.returncode == 0) == ok, f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n" \
                                           f"{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def outs(work: Path) -> dict[str, bytes | None]:
    return {f"{root}/{name}": data for root in OUTS for name, data in tree(work / root).items()}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The tracked files of the repo, tiny params, a local source of two rows; `dvc repro` run and committed."""
    work = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    (work / "data/raw/rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    registry = work / "configs/datasets.yaml"
    registry.write_text(registry.read_text() + "\nrows:\n  source: {path: data/raw/rows.jsonl}\n  converter: gsm8k\n")
    write_params(work, {**TINY, "prepare.train": ["rows", "arithmetic"], "eval.max_new_tokens": 16})
    sh(["git", "init", "-q"], work)
    sh([*GIT, "add", "-A"], work)
    sh([*GIT, "commit", "-q", "-m", "clone"], work)
    assert ran(sh([*DVC, "repro"], work)) == ["prepare", "train_sft", "train_grpo", "merge", "eval"]
    sh([*GIT, "add", "-A"], work)
    sh([*GIT, "commit", "-q", "-m", "dvc repro"], work)
    return work


def test_a_clean_clone_runs_clean_and_a_deleted_out_comes_back_without_a_run(clone: Path):
    for name in ("sft", "grpo", "merged"):
        record = json.loads((clone / f"models/{name}.run.json").read_text())
        assert record["git_dirty"] is False and len(record["git_commit"]) == 40, name  # its own writes are no dirt
        assert "git_commit" not in json.loads((clone / f"models/{name}/lineage.json").read_text())
    assert "uncommitted" not in (clone / "models/merged/README.md").read_text()
    # The scratch of finished runs is gone (checkpoints, curves as written, TRL's placeholder cards).
    assert not [path for path in (clone / "checkpoints").rglob("*") if path.is_file()]
    assert "up to date" in sh([*DVC, "status"], clone)

    before = outs(clone)
    shutil.rmtree(clone / "models/sft")
    output = sh([*DVC, "repro", "eval"], clone)
    assert "Stage 'train_sft' is cached - skipping run" in output and ran(output) == []
    assert outs(clone) == before
    assert "up to date" in sh([*DVC, "status"], clone)


def test_the_same_weights_at_another_commit_run_nothing_after_them(clone: Path):
    script = clone / "stages/train_sft.py"
    script.write_text(script.read_text() + "# a comment: the code changed, what it computes did not\n")
    sh([*GIT, "commit", "-q", "-am", "comment"], clone)
    head = sh(["git", "rev-parse", "HEAD"], clone).strip()
    before = outs(clone)
    output = sh([*DVC, "repro"], clone)
    assert ran(output) == ["train_sft"]  # the weights, lineage and curves are the same: no cascade
    after = outs(clone)
    assert {name for name in before if before[name] != after[name]} == {"models/sft.run.json"}
    assert json.loads((clone / "models/sft.run.json").read_text()) == {"stage": "train_sft", "git_commit": head,
                                                                       "git_dirty": False}
    sh([*GIT, "add", "-A"], clone)
    sh([*GIT, "commit", "-q", "-m", "dvc repro"], clone)


@pytest.mark.parametrize("failing,breaks", [
    ("train_sft", {"params": {"sft.max_stepz": 3}}),                 # a typo: exit 2 before any model loads
    ("train_grpo", {"params": {"grpo.num_generations": 3}}),         # does not divide the batch of 4
    ("prepare", {"row": {"question": "How many plums?"}}),           # a source row without an answer: exit 3
])
def test_a_failed_stage_leaves_one_command_from_the_previous_outs(clone: Path, failing: str, breaks: dict):
    before = outs(clone)
    if "params" in breaks:
        write_params(clone, {**TINY, "prepare.train": ["rows", "arithmetic"], "eval.max_new_tokens": 16,
                             **breaks["params"]})
    else:
        with (clone / "data/raw/rows.jsonl").open("a") as rows:
            rows.write(json.dumps(breaks["row"]) + "\n")
    output = sh([*DVC, "repro"], clone, ok=False)
    assert ran(output) == [failing] and outs(clone) != before  # DVC deleted the failed stage's outs first

    sh([*DVC, "checkout"], clone)  # the one command
    assert outs(clone) == before

    sh(["git", "checkout", "--", "params.yaml", "data/raw/rows.jsonl"], clone)
    assert "up to date" in sh([*DVC, "status"], clone)
