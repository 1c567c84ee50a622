"""Measure the pipeline: every figure a ratio against a baseline taken in the same run.

    python benchmarks/run.py                      # all benchmarks, ~10 minutes on 2 cores
    python benchmarks/run.py --only fail_fast prepare_scaling --repeat 5

Works in a throwaway copy of the repo's tracked files (the user's workspace,
DVC cache and experiments are never touched), prints a table, and writes
benchmarks/results/latest.json. Shared machines are noisy, so each timing is
repeated and min and median are reported; ratios use the minimum (the least
disturbed run). Nothing here asserts: targets are printed beside the figures.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
sys.path.insert(0, str(ROOT))

Row = dict[str, Any]
BENCHMARKS: dict[str, Callable[[Path, int], list[Row]]] = {}


def benchmark(name: str):
    """Register a benchmark: fn(workspace, repeat) -> rows; they run in registration order."""

    def register(fn: Callable[[Path, int], list[Row]]) -> Callable[[Path, int], list[Row]]:
        BENCHMARKS[name] = fn
        return fn

    return register


def run(cmd: list[str], cwd: Path, *, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one command (seconds) and its result."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
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


def set_params(work: Path, *replacements: tuple[str, str]) -> None:
    path = work / "params.yaml"
    text = path.read_text()
    for old, new in replacements:
        if old not in text:
            raise RuntimeError(f"benchmark setup: {old!r} not in params.yaml")
        text = text.replace(old, new, 1)
    path.write_text(text)


def clone(target: Path) -> Path:
    """The tracked files of the repo in a fresh git repo: what a new clone would hold."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    run(["git", "init", "-q"], target)
    run([*git, "add", "-A"], target)
    run([*git, "commit", "-q", "-m", "benchmark workspace"], target)
    return target


PY = sys.executable
DVC = [PY, "-m", "dvc"]


@benchmark("end_to_end")
def end_to_end(work: Path, repeat: int) -> list[Row]:
    """The default `dvc repro` on this machine: wall time and peak RSS of the largest stage process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wall, _ = run([*DVC, "repro"], work)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    note = "peak RSS is the largest child process" + ("" if peak_mib * 1024 > before else " (earlier child larger)")
    metrics = json.loads((work / "metrics" / "eval.json").read_text()) if (work / "metrics/eval.json").is_file() else {}
    return [row("dvc repro (default params)", {"min": wall, "median": wall, "n": 1}, None, "s", "<= 300 s",
                note=f"{note}: {peak_mib:.0f} MiB; eval metrics: {json.dumps(metrics)[:300]}")]


@benchmark("incremental")
def incremental(work: Path, repeat: int) -> list[Row]:
    """`dvc exp run -S grpo.num_generations=8` after a full repro: only GRPO and later stages may run."""
    if not (work / "dvc.lock").is_file():
        run([*DVC, "repro"], work)
    full, _ = run([*DVC, "repro", "--force"], work)
    wall, result = run([*DVC, "exp", "run", "-S", "grpo.num_generations=8"], work)
    ran = sorted({line.split("'")[1] for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Running stage '")})
    return [row("exp run -S grpo.num_generations=8 vs full repro", {"min": wall, "median": wall, "n": 1},
                {"min": full, "median": full, "n": 1}, "s", "only train_grpo, merge, eval re-run",
                note=f"stages run: {', '.join(ran)}")]


@benchmark("fail_fast")
def fail_fast(work: Path, repeat: int) -> list[Row]:
    """Start to params error for a misspelled key, vs the same stage loading its start model."""
    if not (work / "models" / "sft").is_dir():
        run([*DVC, "repro", "train_sft"], work)
    bad = work / "bad_params.yaml"
    bad.write_text((work / "params.yaml").read_text().replace("  num_generations:", "  num_generaitons:", 1))
    run([PY, "stages/train_grpo.py", "--dry-run"], work)  # warm the TRL schema cache, as any second run finds it

    def error() -> float:
        elapsed, result = run([PY, "stages/train_grpo.py", "--params", str(bad)], work, check=False)
        if result.returncode != 2:
            raise RuntimeError(f"expected exit 2, got {result.returncode}: {result.stderr}")
        return elapsed

    load = [PY, "-c", "from llmhalluc import models; models.load_model_and_tokenizer('models/sft')"]
    return [row("params error (bad key) vs loading models/sft", timings(error, repeat),
                timings(lambda: run(load, work)[0], repeat), "s", "error <= 2 s")]


def paired(first: list[str], second: list[str], work: Path, repeat: int) -> tuple[dict, dict]:
    """Timings of two commands run alternately, so a change in machine load hits both alike."""
    a, b = [], []
    for _ in range(repeat):
        a.append(run(first, work)[0])
        b.append(run(second, work)[0])
    return ({"min": min(a), "median": statistics.median(a), "n": repeat},
            {"min": min(b), "median": statistics.median(b), "n": repeat})


@benchmark("stage_overhead")
def stage_overhead(work: Path, repeat: int) -> list[Row]:
    """train_sft / train_grpo through the pipeline vs a bare TRL script doing the same steps (bare_trl.py)."""
    if not (work / "models" / "grpo").is_dir():
        run([*DVC, "repro", "train_grpo"], work)
    shutil.copy2(ROOT / "benchmarks" / "bare_trl.py", work / "bare_trl.py")
    rows = []
    for stage, short in (("train_sft", "sft"), ("train_grpo", "grpo")):
        pipeline, bare = paired([PY, f"stages/{stage}.py"], [PY, "bare_trl.py", short], work, repeat)
        rows.append(row(f"{stage} stage vs bare TRL", pipeline, bare, "s", "ratio <= 1.05",
                        note="whole process: start-up, model load, data, training, save"))
    return rows


@benchmark("eval_throughput")
def eval_throughput(work: Path, repeat: int) -> list[Row]:
    """Batched eval vs one-at-a-time generate on the trained default model (benchmarks/eval_throughput.py)."""
    model = work / "models" / "merged"
    if not model.is_dir():
        run([*DVC, "repro", "merge"], work)
    out = work / "eval_throughput.json"
    run([PY, str(ROOT / "benchmarks" / "eval_throughput.py"), "--model", str(model), "--repeats", str(max(repeat, 3)),
         "--out", str(out)], work)
    paths = json.loads(out.read_text())["paths"]
    single = paths["one at a time"]

    def rate(path: dict) -> dict:
        return {"max": path["examples_per_s_best"], "median": path["examples_per_s_median"], "n": len(path["seconds"])}

    return [row(f"eval {name}", rate(path), rate(single), "examples/s", ">= 10x one at a time",
                note=f"median speed-up {path['speedup_median']:.1f}x", higher_is_better=True)
            for name, path in paths.items() if name != "one at a time"]


@benchmark("prepare_scaling")
def prepare_scaling(work: Path, repeat: int) -> list[Row]:
    """prepare's rows/s at 1k, 10k and 100k synthetic rows; a linear stage keeps rows/s flat."""
    original = (work / "params.yaml").read_text()
    rows, base = [], None
    # Interpreter start and imports are paid once per run whatever the size; measure them to take them out.
    startup = timings(lambda: run([PY, "stages/prepare.py", "--dry-run"], work)[0], repeat)["min"]
    try:
        for total in (1_000, 10_000, 100_000):
            (work / "params.yaml").write_text(original)
            set_params(work, ("    sft: 1500 ", f"    sft: {int(total * 0.8)} "),
                       ("    grpo: 128 ", f"    grpo: {int(total * 0.1)} "),
                       ("    eval: 200 ", f"    eval: {int(total * 0.1)} "),
                       ("    max_steps: 2 ", "    max_steps: 5 "), ("    max_operand: 9 ", "    max_operand: 999 "))
            seconds = timings(lambda: run([PY, "stages/prepare.py"], work)[0], repeat)
            work_s = {k: max(seconds[k] - startup, 1e-3) for k in ("min", "median")}
            rate = {"max": total / work_s["min"], "median": total / work_s["median"], "n": seconds["n"]}
            base = base or rate
            rows.append(row(f"prepare {total:,} rows", rate, base, "rows/s", "flat rows/s (linear)",
                            note=f"min wall {seconds['min']:.2f} s, minus {startup:.2f} s start-up",
                            higher_is_better=True))
    finally:
        (work / "params.yaml").write_text(original)
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
        return f"{best:.3g} / {m['median']:.3g}"

    lines = ["| benchmark | measured (best / median) | baseline (best / median) | ratio | target | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else "-"
        lines.append(f"| {r['name']} | {fmt(r['measured'])} {r['unit']} | {fmt(r['baseline'])} | {ratio} | "
                     f"{r['target']} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run just these benchmarks")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per timing (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    rows: list[Row] = []
    work = clone(Path(tempfile.mkdtemp(prefix="llmhalluc-bench-")))
    try:
        for name in args.only or list(BENCHMARKS):
            print(f"== {name}", flush=True)
            for r in BENCHMARKS[name](work, args.repeat):
                r["benchmark"] = name
                rows.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    finally:
        if args.keep:
            print(f"workspace kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = {"machine": machine(), "repeat": args.repeat, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmachine: {json.dumps(report['machine'])}\n\n{table(rows)}\n\nwritten: {args.out}")


if __name__ == "__main__":
    main()
