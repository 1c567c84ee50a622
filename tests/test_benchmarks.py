"""The benchmarks still run and their published figures say what they measured.

Benchmarks assert nothing about speed; these tests only make sure that every
benchmark runs to the end against today's code (`benchmarks/run.py --smoke`: the
same scripts, stages and library calls on a pipeline of seconds), so an API
change that breaks one fails CI instead of the next person who measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script

bench = load_script("benchmarks/run.py")


def test_every_benchmark_runs_to_the_end_at_smoke_size(tmp_path: Path):
    out = tmp_path / "smoke.json"
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1200)
    report = json.loads(out.read_text()) if out.is_file() else {}
    failed = report.get("failed") or {}
    detail = "\n".join(f"--- {name}\n{trace}" for name, trace in failed.items()) or result.stderr[-4000:]
    assert result.returncode == 0, f"benchmarks/run.py --smoke exited {result.returncode}:\n{detail}"
    assert not failed
    ran = {row["benchmark"] for row in report["rows"]}
    assert ran == set(bench.BENCHMARKS), f"benchmarks without a row: {set(bench.BENCHMARKS) - ran}"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert report["code"]["commit"] == head.stdout.strip()
    assert report["smoke"] is True and "`--smoke`" in bench.markdown(report)


def test_eval_throughput_alone_takes_the_builtin_model_and_generated_prompts(tmp_path: Path):
    """`python benchmarks/eval_throughput.py` in a fresh clone has no models/merged or data/prepared and falls back
    to an untrained built-in model and prompts made like prepare's; run.py's smoke never takes those paths."""
    out = tmp_path / "eval_throughput.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--model", "builtin:tiny-qwen2", "--prompts", "generated",
         "--examples", "4", "--single-examples", "2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "1",
         "--threads", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["model"].startswith("built-in") and report["prompts"].startswith("generated")
    assert set(report["paths"]) == {"one at a time", "eval's loop, batch 1", "batched, batch 2", "batched, batch 4"}


def test_smoke_figures_never_replace_the_published_results():
    with pytest.raises(SystemExit):
        bench.parse_args(["--smoke", "--out", str(bench.RESULTS)])
    assert bench.SMOKE_RESULTS.resolve() != bench.RESULTS and bench.PARTIAL != bench.RESULTS


def test_smoke_params_are_keys_of_params_yaml(tmp_path: Path):
    """A smoke size written against an older params.yaml would stop the smoke; name the key here instead."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    bench.set_params(tmp_path, bench.SMOKE.params)
    with pytest.raises(RuntimeError, match=r"sft\.no_such_key"):
        bench.set_params(tmp_path, {"sft.no_such_key": 1})


def test_benchmarks_readme_shows_the_published_results_as_run_py_renders_them():
    """The table in benchmarks/README.md is run.py's rendering of results/latest.json, commit line included,
    so its figures come from the JSON and not from an edit by hand."""
    report = json.loads(bench.RESULTS.read_text())
    rendered = bench.markdown(report)
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert rendered in readme, (f"benchmarks/README.md does not hold the table of {bench.RESULTS.name}; "
                                f"paste what `python benchmarks/run.py` printed:\n{rendered}")


def test_published_results_name_a_commit_of_this_history():
    """results/latest.json says which code it measured: a commit that main contains, so the README's figures
    can be traced to code that existed (not 'commit not recorded', not a commit from elsewhere)."""
    import re

    code = json.loads(bench.RESULTS.read_text()).get("code") or {}
    commit = code.get("commit") or ""
    assert re.fullmatch(r"[0-9a-f]{40}", commit), f"{bench.RESULTS.name} records no commit: re-run benchmarks/run.py"
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip() == "true"
    if not shallow:  # a shallow clone may not hold it; a full history must
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT)
        assert ancestor.returncode == 0, f"{commit[:12]} is not in this branch's history"
