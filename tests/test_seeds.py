"""The seeds command and report: t intervals against known values, and real DVC experiments end to end.

The end-to-end test uses a one-stage DVC pipeline whose metric is a known function of
its params (no model), so the report's means and intervals can be checked exactly
while the experiments, the queue and `dvc exp show` are DVC's own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmhalluc import experiments, seeds
from llmhalluc.statistics import compare, mean_ci, t_quantile


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_mean_ci_of_known_values():
    est = mean_ci([1, 2, 3, 4, 5])
    assert est.mean == 3 and est.n == 5
    assert est.std == pytest.approx(math.sqrt(2.5))
    assert est.half_width == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
    assert est.predict_half_width == pytest.approx(2.7764 * math.sqrt(2.5) * math.sqrt(1.2), abs=1e-3)
    assert mean_ci([0.4]).half_width is None  # one seed: no interval, and the table says so
    assert "no CI" in mean_ci([0.4]).text()


def test_compare_calls_overlapping_intervals_no_difference():
    a = mean_ci([0.30, 0.32, 0.34, 0.31, 0.33])
    assert compare(a, mean_ci([0.31, 0.35, 0.29, 0.36, 0.30])) == "no difference"
    assert compare(a, mean_ci([0.50, 0.52, 0.51, 0.53, 0.49])) == "higher"
    assert compare(a, mean_ci([0.10, 0.12, 0.11, 0.09, 0.13])) == "lower"


def test_commands_set_every_seed_key_and_refuse_a_seed_override():
    commands = seeds.experiment_commands([3, 4], ["prepare.backtrack.error_rate=0.3"], queue=True, name="retry")
    assert len(commands) == 2
    first = commands[0]
    assert first[:4] == ["dvc", "exp", "run", "--queue"] and first[first.index("--name") + 1] == "retry-seed3"
    assert "prepare.backtrack.error_rate=0.3" in first
    assert [f"{k}=3" for k in seeds.SEED_KEYS] == [a for a in first if a.split("=")[0] in seeds.SEED_KEYS]
    with pytest.raises(SystemExit, match=r"sft\.seed is one of the seed keys"):
        seeds.experiment_commands([0], ["sft.seed=7"], queue=False)
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        seeds.experiment_commands([0], ["sft.seed"], queue=False)


def _experiment(name: str, state: str | None, accuracy: float) -> dict:
    """One experiment as `dvc exp show --json` writes it; a queued run carries its executor's state."""
    data = {"params": {"params.yaml": {"data": {"sft": {"seed": 0}}}},
            "metrics": {"metrics/eval.json": {"data": {"sft": {"accuracy": accuracy}}}}}
    return {"name": name, "executor": {"state": state, "name": "dvc-task"} if state else None,
            "revs": [{"rev": "0" * 40, "name": name, "data": data, "error": None}]}


def test_runs_are_the_finished_experiments_whether_run_now_or_from_the_queue():
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "a" * 40, "experiments": [
                 _experiment("now", None, 0.1), _experiment("queued-done", "success", 0.2),
                 _experiment("running", "running", 0.3), _experiment("queued", "queued", 0.4),
                 _experiment("failed", "failed", 0.5)]}]
    runs = experiments.runs_from_exp_show(shown)
    assert [(r.name, r.metrics["metrics/eval.json:sft.accuracy"]) for r in runs] == [("now", 0.1), ("queued-done", 0.2)]


STAGE = """\
import json, pathlib
from ruamel.yaml import YAML
p = YAML(typ="safe").load(open("params.yaml"))
value = p["prepare"]["rate"] + 0.01 * p["sft"]["seed"]
pathlib.Path("metrics").mkdir(exist_ok=True)
metrics = {"sft": {"accuracy": value, "probe": {"plausible": {"detection_auroc": 0.5}}}}
json.dump(metrics, open("metrics/eval.json", "w"))
"""
PARAMS = """\
prepare: {seed: 0, rate: 0.1}
sft: {seed: 0, tiny_model: {seed: 0}}
grpo: {seed: 0}
eval: {seed: 0}
"""
DVC_YAML = """\
stages:
  score:
    cmd: python score.py
    params: [prepare, sft, grpo, eval]
    deps: [score.py]
    metrics: [metrics/eval.json: {cache: false}]
"""


def _seeds_cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "llmhalluc.seeds", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    sh("dvc", "init", "-q")
    (tmp_path / "score.py").write_text(STAGE)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "toy pipeline")
    return tmp_path


def test_seeds_run_and_report_mean_and_ci_over_real_dvc_experiments(toy_repo: Path):
    for config in ([], ["-S", "prepare.rate=0.5"]):
        result = _seeds_cli(toy_repo, "run", "--seeds", "3", *config)
        assert result.returncode == 0, result.stderr
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=toy_repo, capture_output=True,
                                      text=True, check=True).stdout)
    assert len(experiments.runs_from_exp_show(shown)) == 6  # six experiments, each DVC's own

    result = _seeds_cli(toy_repo, "report", "--reference", "prepare.rate=0.1")
    assert result.returncode == 0, result.stderr
    report = {c["config"]: c for c in json.loads((toy_repo / "reports/seeds/report.json").read_text())}
    assert set(report) == {"prepare.rate=0.1", "prepare.rate=0.5"}
    low = report["prepare.rate=0.1"]["metrics"]["metrics/eval.json:sft.accuracy"]
    assert low["n"] == 3 and low["mean"] == pytest.approx(0.11)  # 0.1 + 0.01 x mean(0, 1, 2)
    assert low["ci95_half_width"] == pytest.approx(4.3027 * 0.01 / math.sqrt(3), abs=1e-4)
    assert sorted(report["prepare.rate=0.5"]["seeds"]) == [[s] * len(seeds.SEED_KEYS) for s in range(3)]
    table = (toy_repo / "reports/seeds/report.md").read_text()
    assert "| prepare.rate=0.5 | 3 | 0.510 ± 0.025 ↑ |" in table  # its interval lies above the reference's
    assert "0.500 ± 0.000" in table  # a metric identical on every seed: a zero-width interval
    assert (toy_repo / "reports/seeds/report.svg").read_text().startswith("<svg")


def test_queue_queues_one_experiment_per_seed_and_report_skips_unfinished(toy_repo: Path):
    result = _seeds_cli(toy_repo, "queue", "--seeds", "2", "-S", "prepare.rate=0.3")
    assert result.returncode == 0, result.stderr
    status = subprocess.run(["dvc", "queue", "status"], cwd=toy_repo, capture_output=True, text=True).stdout
    assert status.count("Queued") == 2
    result = _seeds_cli(toy_repo, "report")
    assert result.returncode != 0 and "no finished experiments" in result.stderr + result.stdout
