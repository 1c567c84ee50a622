"""One config over N seeds as DVC experiments, and the command line that queues, runs and reports them.

A single run says little: on the default task two seeds of one config differ by more
than most effects worth testing. So a config is run over seeds, every seed that
matters at once (data generation and split, the built-in model's initial weights, the
trainers, eval's sampling), each seed one ordinary DVC experiment:

    python -m llmhalluc.seeds queue --seeds 5 -S prepare.backtrack.error_rate=0.3
    dvc queue start -j 2            # or: python -m llmhalluc.seeds run ... (one after another, now)
    python -m llmhalluc.seeds report

The report (llmhalluc.seed_report) reads `dvc exp show --json` (llmhalluc.experiments),
groups the finished experiments by their params with the seed keys left out (a config),
and writes, per config and metric, the mean and its Student-t 95 % interval.

Because the experiments are DVC's own, `dvc exp show`, `dvc params diff` and
`dvc exp apply` work on each seed as on any other experiment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from llmhalluc.experiments import exp_show
from llmhalluc.seed_report import DEFAULT_METRICS, REPORT_DIR, SEED_KEYS, report

# --------------------------------------------------------------------------- queueing


def experiment_commands(seeds: Sequence[int], overrides: Sequence[str], *, queue: bool, name: str | None = None,
                        seed_keys: Sequence[str] = SEED_KEYS) -> list[list[str]]:
    """One `dvc exp run` command line per seed: the config's -S overrides plus every seed key set to the seed."""
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or not key:
            raise SystemExit(f"error: -S {override!r}: expected KEY=VALUE, as dvc exp run -S takes it")
        if key in seed_keys:
            raise SystemExit(f"error: -S {override}: {key} is one of the seed keys this command sets per seed "
                             f"({', '.join(seed_keys)}); pick the seeds with --seeds")
    commands = []
    for seed in seeds:
        cmd = ["dvc", "exp", "run", *(["--queue"] if queue else [])]
        if name:
            cmd += ["--name", f"{name}-seed{seed}"]
        for override in overrides:
            cmd += ["-S", override]
        for key in seed_keys:
            cmd += ["-S", f"{key}={seed}"]
        commands.append(cmd)
    return commands


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command line (tests/test_readme_commands.py parses the README's commands with it)."""
    parser = argparse.ArgumentParser(prog="python -m llmhalluc.seeds", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("queue", "queue one DVC experiment per seed (run them with `dvc queue start`)"),
                            ("run", "run one DVC experiment per seed now, one after another")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
        cmd.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
        cmd.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                         help="a param of the config, as dvc exp run -S takes it (repeatable)")
        cmd.add_argument("--name", help="experiment name prefix: NAME-seedN")
    rep = sub.add_parser("report", help="mean ± 95 %% CI per config over the finished experiments")
    rep.add_argument("--metric", action="append", help="metric name or glob (repeatable; default: accuracy and "
                                                        "the backtracking diagnostics of every model)")
    rep.add_argument("--out", type=Path, default=REPORT_DIR, help=f"output folder (default {REPORT_DIR})")
    rep.add_argument("--reference", help="config label to compare the others with (↑ / ↓ in the table)")
    rep.add_argument("--from-json", type=Path, help="read this `dvc exp show --json` output instead of running it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command in ("queue", "run"):
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        for cmd in experiment_commands(seeds, args.set_param, queue=args.command == "queue", name=args.name):
            print("+ " + " ".join(cmd), flush=True)
            code = subprocess.call(cmd)
            if code:
                return code
        if args.command == "queue":
            print("queued; run them with `dvc queue start -j 2`, then `python -m llmhalluc.seeds report`")
        return 0
    entries = json.loads(args.from_json.read_text()) if args.from_json else exp_show()
    configs = report(entries, args.metric or DEFAULT_METRICS, args.out, args.reference)
    sys.stdout.write((args.out / "report.md").read_text())
    print(f"{sum(len(c.runs) for c in configs)} runs in {len(configs)} configs -> {args.out}/report.{{md,json,svg}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
