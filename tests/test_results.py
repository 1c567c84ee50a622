"""The key results table: reading model blocks, the table's cells, and `python -m llmhalluc.results` and the
`dvc exp show --drop/--keep` recipe on a toy DVC repo with real experiments (tests/test_seeds.py's pattern)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llmhalluc import results
from tests.conftest import ROOT

BLOCK = {"examples": 10, "accuracy": 0.5, "correction_rate": None, "rollback": {"accuracy": 0.55},
         "probe": {"lookup": {"detection_auroc": 0.75, "correction_right": 0.125, "false_positive": 0.0},
                   "random": {"detection_auroc": 0.9}}}


def test_key_results_read_the_first_probed_kind_and_leave_missing_ones_none():
    assert results.key_results(BLOCK) == {"accuracy": 0.5, "rollback": 0.55, "detection": 0.75, "correction": 0.125,
                                          "false pos": 0.0, "probe": "lookup"}
    bare = results.key_results({"accuracy": 0.25})  # diagnostics and rollback switched off
    assert bare == {"accuracy": 0.25, "rollback": None, "detection": None, "correction": None, "false pos": None,
                    "probe": None}


def test_the_model_table_is_aligned_and_never_says_none():
    table = results.model_table({"sft": BLOCK, "base": {"accuracy": 0.125}, "transitions": {"sft->base": {}}})
    lines = table.splitlines()
    assert lines == [
        "model  accuracy  rollback  detection  correction  false pos  probe",
        "sft       0.500     0.550      0.750       0.125      0.000  lookup",
        "base      0.125         -          -           -          -  -",
    ]
    assert "None" not in table and "null" not in table


def _shown(name: str, beta: float, accuracy: float, *, state: str | None = None) -> dict:
    data = {"params": {"params.yaml": {"data": {"grpo": {"beta": beta, "lr": 1e-6}, "eval": {"seed": 0}}}},
            "metrics": {"metrics/eval.json": {"data": {"sft": {"accuracy": 0.5}, "grpo": {"accuracy": accuracy}}}}}
    return {"name": name, "executor": {"state": state} if state else None,
            "revs": [{"rev": "f" * 40, "name": name, "data": data, "error": None}]}


def test_experiments_name_the_params_they_changed_against_their_commit():
    commit = _shown("main", 0.1, 0.6)["revs"][0]
    commit = {**commit, "rev": "a" * 40, "experiments": [_shown("b2", 0.2, 0.7), _shown("q", 0.3, 0.0, state="queued")]}
    workspace = {**_shown("w", 0.1, 0.6)["revs"][0], "rev": "workspace", "name": None, "experiments": None}
    rows = results.experiments([workspace, commit])
    assert [(r["name"], r["changed"], r["error"]) for r in rows] == [
        ("workspace", [], None), ("main", [], None), ("b2", ["grpo.beta=0.2"], None),
        ("q", ["grpo.beta=0.3"], "queued")]
    table = results.experiment_table(rows)
    assert "b2          sft       0.500" in table and "grpo.beta=0.2" in table


STAGE = """\
import json, pathlib
from ruamel.yaml import YAML
beta = YAML(typ="safe").load(open("params.yaml"))["grpo"]["beta"]
def block(accuracy):
    return {"examples": 10, "accuracy": accuracy, "rollback": {"accuracy": accuracy + 0.01},
            "probe": {"plausible": {"detection_auroc": 0.5 + beta, "correction_right": 0.1, "false_positive": 0.0}}}
pathlib.Path("metrics").mkdir(exist_ok=True)
json.dump({"sft": block(0.5), "grpo": block(0.5 + beta), "transitions": {"sft->grpo": {"wrong_to_right": 1}}},
          open("metrics/eval.json", "w"))
"""
DVC_YAML = """\
stages:
  eval:
    cmd: python score.py
    params: [grpo, eval]
    deps: [score.py]
    metrics: [metrics/eval.json: {cache: false}]
"""
#: The README's recipe: DVC's own table, every column dropped but the experiment and the accuracies.
RECIPE = ["dvc", "exp", "show", "--no-pager", "--drop", ".*",
          "--keep", r"Experiment$|(sft|grpo)\.(rollback\.)?accuracy$"]


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("results")

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    sh("dvc", "init", "-q")
    (repo / "score.py").write_text(STAGE)
    (repo / "params.yaml").write_text("grpo: {beta: 0.1, lr: 1.0e-06}\neval: {seed: 0}\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "toy pipeline")
    sh("dvc", "exp", "run", "-q", "-S", "grpo.beta=0.2", "-n", "beta-02")
    sh("dvc", "exp", "run", "-q", "-S", "grpo.beta=0.3", "-S", "grpo.lr=2e-6", "-n", "beta-03")
    return repo


def test_the_results_command_lists_every_experiment_and_model(toy_repo: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "llmhalluc.results"], cwd=toy_repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["experiment", "model", "accuracy", "rollback", "detection", "correction", "false",
                                "pos", "changed", "params"]
    assert len(lines) == 1 + 4 * 2 + 1  # header, 4 experiments (workspace, commit, two runs) x 2 models, the note
    at = lines.index("beta-02     sft       0.500     0.510      0.700       0.100      0.000  grpo.beta=0.2")
    assert lines[at + 1] == "            grpo      0.700     0.710      0.700       0.100      0.000"
    assert "beta-03     sft       0.500     0.510      0.800       0.100      0.000  grpo.beta=0.3, grpo.lr=2e-06" \
        in lines
    assert max(len(line) for line in lines[:9]) <= 120  # fits a terminal
    assert "None" not in done.stdout


def test_the_dvc_exp_show_recipe_keeps_only_the_named_columns(toy_repo: Path):
    done = subprocess.run([*RECIPE, "--csv"], cwd=toy_repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header == "Experiment,sft.accuracy,sft.rollback.accuracy,grpo.accuracy,grpo.rollback.accuracy"
    assert len(rows) == 4 and "beta-02,0.5,0.51,0.7,0.71" in rows
    table = subprocess.run(RECIPE, cwd=toy_repo, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "COLUMNS": "110"}).stdout
    assert "beta-02" in table and "…" not in table  # the rich table fits 110 columns, nothing collapsed
    assert shlex.join(RECIPE) in (ROOT / "README.md").read_text(), "the README gives this recipe as tested here"
