"""Measure the pipeline: every figure a ratio against a baseline taken in the same run.

    python benchmarks/run.py                      # all benchmarks, ~15 minutes on 2 cores
    python benchmarks/run.py --only fail_fast prepare_scaling --repeat 5
    python benchmarks/run.py --smoke              # every benchmark at the smallest size, ~80 s of CPU

Works in a throwaway copy of the repo's tracked files (the user's workspace,
DVC cache and experiments are never touched), prints a table, and writes
benchmarks/results/latest.json with the git commit it measured. Shared machines
are noisy, so each timing is repeated and min and median are reported; ratios
use the minimum (the least disturbed run). Nothing here asserts on a number:
targets are printed beside the figures. A benchmark that fails (an exception,
a command's non-zero exit) does not stop the others; the run then exits 1.

--smoke runs every benchmark through the same scripts, stages and library calls
on a tiny pipeline (SMOKE's params) with one repetition, and writes its figures
elsewhere: they prove the benchmarks still run, not how fast anything is.
tests/test_benchmarks.py runs it, so a change that breaks a benchmark fails CI.
Its cost is some twenty Python processes that each import torch, transformers
and TRL (~4 s of CPU apiece), not the work they do.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
#: Where a run that is not the whole set (--only, or one with a failed benchmark) writes: never over latest.json.
PARTIAL = ROOT / "benchmarks" / "results" / "partial.json"
SMOKE_RESULTS = Path(tempfile.gettempdir()) / "llmhalluc-bench-smoke.json"
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Scale:
    """How big a run is. Both scales run the same benchmarks through the same code; only sizes differ."""

    repeat: int
    #: params.yaml edits (dotted keys, each must exist) made in the workspace before anything runs
    params: dict[str, Any] = field(default_factory=dict)
    #: rows prepared by prepare_scaling, smallest first; rows/s between the first two sizes is the baseline
    prepare_rows: tuple[int, ...] = (1_000, 10_000, 100_000)
    #: extra arguments of benchmarks/eval_throughput.py
    eval_args: tuple[str, ...] = ()
    #: extra arguments of benchmarks/eval_diagnostics.py
    diagnostics_args: tuple[str, ...] = ()
    #: fewest repetitions of eval_throughput (its batched paths take well under a second each)
    eval_min_repeats: int = 3
    #: incremental's baseline, a forced re-run of the whole pipeline; the smoke leaves it out (it is a
    #: quarter of the smoke's time and runs exactly the stages end_to_end has just run) and gives no ratio
    full_repro_baseline: bool = True
    #: environment of every command; the smoke runs torch on one thread, so on a busy CI machine it
    #: neither waits on nor slows its neighbours (full runs keep torch's default, as measured before)
    env: dict[str, str] = field(default_factory=dict)


FULL = Scale(repeat=3)
#: A pipeline of seconds: the smallest model, data and step counts the stages accept. The GRPO batch
#: (8) takes the incremental benchmark's `-S grpo.num_generations=8` as the full size does.
SMOKE = Scale(
    repeat=1,
    params={
        "prepare.sizes.sft": 32, "prepare.sizes.grpo": 8, "prepare.sizes.eval": 8,
        "sft.tiny_model.vocab_size": 300, "sft.tiny_model.hidden_size": 32, "sft.tiny_model.num_layers": 1,
        "sft.tiny_model.num_heads": 2, "sft.tiny_model.intermediate_size": 64,
        "sft.max_steps": 4, "sft.per_device_train_batch_size": 4, "sft.logging_steps": 2, "sft.save_steps": 2,
        "grpo.max_steps": 2, "grpo.per_device_train_batch_size": 8, "grpo.num_generations": 2,
        "grpo.max_completion_length": 8, "grpo.logging_steps": 1, "grpo.save_steps": 1,
        "eval.batch_size": 4, "eval.max_new_tokens": 8,
    },
    prepare_rows=(100, 200, 400),
    eval_args=("--examples", "8", "--single-examples", "2", "--batch-size", "4", "--max-new-tokens", "8"),
    diagnostics_args=("--examples", "8"),
    eval_min_repeats=1,
    full_repro_baseline=False,
    env={"OMP_NUM_THREADS": "1"},
)

Row = dict[str, Any]
BENCHMARKS: dict[str, Callable[[Path, Scale], list[Row]]] = {}


def benchmark(name: str):
    """Register a benchmark: fn(workspace, scale) -> rows; they run in registration order."""

    def register(fn: Callable[[Path, Scale], list[Row]]) -> Callable[[Path, Scale], list[Row]]:
        BENCHMARKS[name] = fn
        return fn

    return register


#: The environment of every command run: offline, plus the scale's settings (main sets them).
ENV: dict[str, str] = {}


def run(cmd: list[str], cwd: Path, *, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one command (seconds) and its result."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **ENV})
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-4000:]}")
    return elapsed, result


def timings(fn: Callable[[], float], repeat: int) -> dict[str, float]:
    values = [fn() for _ in range(repeat)]
    return {"min": min(values), "median": statistics.median(values), "n": len(values)}


def row(name: str, measured: dict, baseline: dict | None, unit: str, target: str, note: str = "",
        higher_is_better: bool = False) -> Row:
    ratio = None
    if baseline:
        ratio = (measured["min"] / baseline["min"]) if not higher_is_better else (measured["max"] / baseline["max"])
    return {"name": name, "measured": measured, "baseline": baseline, "ratio": ratio, "unit": unit,
            "target": target, "note": note}


def set_params(work: Path, edits: dict[str, Any]) -> None:
    """Edit the workspace's params.yaml by dotted keys, comments kept; a key params.yaml lacks is an error,
    so a benchmark written against an older params.yaml stops instead of measuring something else."""
    if not edits:
        return
    yaml = YAML()
    path = work / "params.yaml"
    data = yaml.load(path.read_text())
    for dotted, value in edits.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise RuntimeError(f"benchmark setup: {dotted} is not a key of params.yaml")
        node[last] = value
    out = io.StringIO()
    yaml.dump(data, out)
    path.write_text(out.getvalue())


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def clone(target: Path, params: dict[str, Any]) -> Path:
    """The tracked files of the repo (as they are on disk) in a fresh git repo: what a new clone would hold,
    with the scale's params edits committed, so DVC sees them as the baseline and not as an experiment."""
    for name in git("ls-files", "-z").split("\0"):
        if name and (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    set_params(target, params)
    committer = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    run(["git", "init", "-q"], target)
    run([*committer, "add", "-A"], target)
    run([*committer, "commit", "-q", "-m", "benchmark workspace"], target)
    return target


def measured_code() -> dict[str, Any]:
    """The commit the workspace copy was made from, and the tracked files that differed from it (copied as
    they were on disk, so they are part of what was measured; untracked files are not copied)."""
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted": dirty}


PY = sys.executable
DVC = [PY, "-m", "dvc"]


@benchmark("end_to_end")
def end_to_end(work: Path, scale: Scale) -> list[Row]:
    """The default `dvc repro` on this machine: wall time and peak RSS of the largest stage process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wall, _ = run([*DVC, "repro"], work)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    which = "the largest stage" if peak_mib * 1024 > before else "an earlier child process (larger)"
    metrics_file = work / "metrics" / "eval.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    # Eval's metrics grow new keys; the table names only each model's accuracy, the JSON keeps them all.
    accuracy = {name: block["accuracy"] for name, block in metrics.items()
                if isinstance(block, dict) and isinstance(block.get("accuracy"), (int, float))}
    shown = ", ".join(f"{name} {value:.3g}" for name, value in accuracy.items()) or "none found in metrics/eval.json"
    result = row("dvc repro (default params)", {"min": wall, "median": wall, "n": 1}, None, "s", "<= 300 s",
                 note=f"peak RSS of {which}: {peak_mib:.0f} MiB; eval accuracy: {shown}")
    result["eval_metrics"] = metrics
    return [result]


@benchmark("incremental")
def incremental(work: Path, scale: Scale) -> list[Row]:
    """`dvc exp run -S grpo.num_generations=8` after a full repro: only GRPO and later stages may run."""
    if not (work / "dvc.lock").is_file():
        run([*DVC, "repro"], work)
    baseline = None
    if scale.full_repro_baseline:
        full, _ = run([*DVC, "repro", "--force"], work)
        baseline = {"min": full, "median": full, "n": 1}
    wall, result = run([*DVC, "exp", "run", "-S", "grpo.num_generations=8"], work)
    ran = sorted({line.split("'")[1] for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Running stage '")})
    return [row("exp run -S grpo.num_generations=8 vs full repro", {"min": wall, "median": wall, "n": 1},
                baseline, "s", "only train_grpo, merge, eval re-run", note=f"stages run: {', '.join(ran)}")]


@benchmark("fail_fast")
def fail_fast(work: Path, scale: Scale) -> list[Row]:
    """Start to params error for a misspelled key, vs the same stage loading its start model."""
    if not (work / "models" / "sft").is_dir():
        run([*DVC, "repro", "train_sft"], work)
    text = (work / "params.yaml").read_text()
    if "  num_generations:" not in text:
        raise RuntimeError("benchmark setup: no grpo num_generations key in params.yaml to misspell")
    bad = work / "bad_params.yaml"
    bad.write_text(text.replace("  num_generations:", "  num_generaitons:", 1))
    run([PY, "-m", "stages.train_grpo", "--dry-run"], work)  # warm the TRL schema cache, as any second run finds it

    def error() -> float:
        elapsed, result = run([PY, "-m", "stages.train_grpo", "--params", str(bad)], work, check=False)
        if result.returncode != 2:
            raise RuntimeError(f"expected exit 2, got {result.returncode}: {result.stderr}")
        return elapsed

    load = [PY, "-c", "from llmhalluc import models; models.load_model_and_tokenizer('models/sft')"]
    return [row("params error (bad key) vs loading models/sft", timings(error, scale.repeat),
                timings(lambda: run(load, work)[0], scale.repeat), "s", "error <= 2 s")]


def paired(first: list[str], second: list[str], work: Path, repeat: int) -> tuple[dict, dict]:
    """Timings of two commands run alternately, so a change in machine load hits both alike."""
    a, b = [], []
    for _ in range(repeat):
        a.append(run(first, work)[0])
        b.append(run(second, work)[0])
    return ({"min": min(a), "median": statistics.median(a), "n": repeat},
            {"min": min(b), "median": statistics.median(b), "n": repeat})


@benchmark("stage_overhead")
def stage_overhead(work: Path, scale: Scale) -> list[Row]:
    """train_sft / train_grpo through the pipeline vs a bare TRL script doing the same steps (bare_trl.py)."""
    if not (work / "models" / "grpo").is_dir():
        run([*DVC, "repro", "train_grpo"], work)
    rows = []
    for stage, short in (("train_sft", "sft"), ("train_grpo", "grpo")):
        pipeline, bare = paired([PY, "-m", f"stages.{stage}"], [PY, "benchmarks/bare_trl.py", short], work,
                                scale.repeat)
        rows.append(row(f"{stage} stage vs bare TRL", pipeline, bare, "s", "ratio <= 1.05",
                        note="whole process: start-up, model load, data, training, save"))
    return rows


@benchmark("eval_throughput")
def eval_throughput(work: Path, scale: Scale) -> list[Row]:
    """Batched eval vs one-at-a-time `generate` on the trained default model (benchmarks/eval_throughput.py)."""
    model = work / "models" / "merged"
    if not model.is_dir():
        run([*DVC, "repro", "merge"], work)
    out = work / "eval_throughput.json"
    run([PY, "benchmarks/eval_throughput.py", "--model", str(model), "--prompts", "data/prepared/eval.jsonl",
         "--repeats", str(max(scale.repeat, scale.eval_min_repeats)), "--out", str(out), *scale.eval_args], work)
    paths = json.loads(out.read_text())["paths"]
    single = paths["one at a time"]

    def rate(path: dict) -> dict:
        return {"max": path["examples_per_s_best"], "median": path["examples_per_s_median"], "n": len(path["seconds"])}

    # The target is the batched paths'; eval's loop at batch 1 is shown for what the loop alone gains.
    return [row(f"eval {name}", rate(path), rate(single), "examples/s",
                ">= 10x one at a time" if name.startswith("batched") else "-",
                note=f"median speed-up {path['speedup_median']:.1f}x", higher_is_better=True)
            for name, path in paths.items() if name != "one at a time"]


@benchmark("eval_diagnostics")
def eval_diagnostics(work: Path, scale: Scale) -> list[Row]:
    """The default eval with every diagnostic on vs the greedy eval alone (benchmarks/eval_diagnostics.py)."""
    if not (work / "models" / "merged").is_dir():
        run([*DVC, "repro", "merge"], work)
    out = work / "eval_diagnostics.json"
    run([PY, "benchmarks/eval_diagnostics.py", "--repeats", str(scale.repeat), "--out", str(out),
         *scale.diagnostics_args], work)
    result = json.loads(out.read_text())

    # The script keeps the minimum over its interleaved repeats: one figure per path.
    greedy_s = sum(r["greedy_wall_s"] for r in result["rows"])
    greedy = {"min": greedy_s, "median": greedy_s, "n": 1}
    both_s = greedy_s + sum(r["diagnostics_wall_s"] for r in result["rows"])
    both = {"min": both_s, "median": both_s, "n": 1}
    return [row("eval greedy + all diagnostics vs greedy", both, greedy, "s", "ratio <= 2",
                note=f"{result['examples']} problems, models {', '.join(r['model'] for r in result['rows'])}; "
                     f"CPU-time ratio {result['ratio_cpu']}")]


@benchmark("prepare_scaling")
def prepare_scaling(work: Path, scale: Scale) -> list[Row]:
    """prepare's cost per row as the data grows: rows/s between consecutive sizes (1k to 10k, 10k to 100k),
    each the difference of rows over the difference of wall times, so start-up, imports and every fixed cost
    cancel exactly. A linear stage keeps it flat; a quadratic step (a scan of every row per row, a collector
    pass over the whole heap) shows as a ratio far below 1 at ten times the rows."""
    original = (work / "params.yaml").read_text()
    seconds = {}
    try:
        for total in scale.prepare_rows:
            (work / "params.yaml").write_text(original)
            # Longer chains of bigger numbers: enough distinct problems for 100k rows.
            set_params(work, {"prepare.sizes.sft": int(total * 0.8), "prepare.sizes.grpo": int(total * 0.1),
                              "prepare.sizes.eval": int(total * 0.1), "prepare.arithmetic.max_steps": 5,
                              "prepare.arithmetic.max_operand": 999})
            seconds[total] = timings(lambda: run([PY, "-m", "stages.prepare"], work)[0], scale.repeat)
    finally:
        (work / "params.yaml").write_text(original)
    sizes = list(scale.prepare_rows)
    rows, base = [], None
    for small, large in itertools.pairwise(sizes):
        added = large - small
        rate = {"max": added / max(seconds[large]["min"] - seconds[small]["min"], 1e-3),
                "median": added / max(seconds[large]["median"] - seconds[small]["median"], 1e-3),
                "n": seconds[large]["n"]}
        base = base or rate
        rows.append(row(f"prepare {small:,} to {large:,} rows", rate, base, "rows/s", "ratio >= 0.75 (linear)",
                        note=f"min wall {seconds[small]['min']:.2f} s and {seconds[large]['min']:.2f} s",
                        higher_is_better=True))
    return rows


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(rows: list[Row]) -> str:
    def fmt(m: dict | None) -> str:
        if not m:
            return "-"
        best = m["max"] if "max" in m else m["min"]  # rates: higher is better; times: lower
        return f"{best:.3g}" if m.get("n") == 1 else f"{best:.3g} / {m['median']:.3g}"

    lines = ["| benchmark | measured (best / median) | baseline (best / median) | ratio | target | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else "-"
        lines.append(f"| {r['name']} | {fmt(r['measured'])} {r['unit']} | {fmt(r['baseline'])} | {ratio} | "
                     f"{r['target']} | {r['note']} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The results as benchmarks/README.md shows them: a line saying what was measured where, then the table.

    tests/test_benchmarks.py checks that the README holds exactly this for results/latest.json, so the
    figures there always come from the JSON and name the commit they measured.
    """
    m = report["machine"]
    code = report.get("code")
    if code is None:
        which = "commit not recorded"
    else:
        which = f"commit `{code['commit'][:12]}`"
        if code["uncommitted"]:
            which += f" with uncommitted changes to {', '.join(f'`{f}`' for f in code['uncommitted'])}"
    where = (f"{m['platform'].split('-')[0]} {m['processor']}, {m['cpus']} CPU cores, "
             f"{'a CUDA GPU' if m['cuda'] else 'no GPU'}, Python {m['python']}, torch {m['torch']}")
    options = "`--smoke`" if report.get("smoke") else f"`--repeat {report['repeat']}`"
    return f"Run on {m['date'][:10]}, {which}, {where}, {options}:\n\n{table(report['rows'])}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (tests/test_readme_commands.py parses the READMEs' invocations with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run just these benchmarks")
    parser.add_argument("--repeat", type=int, help=f"repetitions per timing (default {FULL.repeat}; "
                        f"{SMOKE.repeat} with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest pipeline and sizes: checks that every benchmark runs, measures nothing "
                        f"worth keeping (results default to {SMOKE_RESULTS})")
    parser.add_argument("--out", type=Path, help=f"JSON results (default: {RESULTS.relative_to(ROOT)} for a "
                        f"complete run, {PARTIAL.relative_to(ROOT)} for --only or a run where a benchmark failed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args(argv)
    if args.smoke and args.out and args.out.resolve() == RESULTS:
        parser.error(f"--smoke figures are not measurements; they never go to {RESULTS.relative_to(ROOT)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = SMOKE if args.smoke else FULL
    scale = replace(base, repeat=args.repeat or base.repeat)
    ENV.update(scale.env)
    code = measured_code()  # before the copy, so it describes exactly the files copied

    rows: list[Row] = []
    failed: dict[str, str] = {}
    work = clone(Path(tempfile.mkdtemp(prefix="llmhalluc-bench-")), scale.params)
    try:
        for name in args.only or list(BENCHMARKS):
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            try:
                results = BENCHMARKS[name](work, scale)
            except Exception:  # one broken benchmark is reported (traceback, exit 1); the rest still run
                failed[name] = traceback.format_exc()
                print(f"FAILED {name}:\n{failed[name]}", flush=True)
                continue
            for r in results:
                r["benchmark"] = name
                rows.append(r)
                print(table([r]).splitlines()[-1], flush=True)
            print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        if args.keep:
            print(f"workspace kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report = {"machine": machine(), "code": code, "repeat": scale.repeat, "smoke": args.smoke,
              "benchmarks": args.only or list(BENCHMARKS), "failed": failed, "rows": rows}
    complete = not args.only and not failed
    out = args.out or (SMOKE_RESULTS if args.smoke else RESULTS if complete else PARTIAL)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{markdown(report)}\n\nwritten: {out}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (tracebacks above and in {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
