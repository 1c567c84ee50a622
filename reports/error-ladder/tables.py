"""The error ladder's tables for docs/results/error-ladder.md, from the seeds report of its sweep.

    python -m llmhalluc.seeds report --from-json reports/error-ladder/exp_show.json \
        --out reports/error-ladder --metric 'metrics/eval.json:*'
    python reports/error-ladder/tables.py reports/error-ladder/report.json

Each config is named by what sets it apart (the kind of wrong step in its SFT data, whether steps carry
their check, the SFT budget); each cell is mean ± half-width of the Student-t 95 % CI over its seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("random", "lookup", "plausible")
METRICS = "metrics/eval.json:"
#: params.yaml's sft.max_steps: a config at another budget is named for it.
DEFAULT_STEPS = 600


def data_kind(params: dict) -> str:
    """The kind of wrong step the config's SFT data holds, or base for the error-free data."""
    return params["prepare.backtrack.error_kind"] if params["prepare.backtrack.error_rate"] else "base"


def name(params: dict) -> str:
    """A config's short name: its kind (or base, without errors), -check, -<steps> off the default, and
    -boundary for wrong steps placed at step boundaries."""
    check = "-check" if params.get("prepare.check_steps") else ""
    steps = params.get("sft.max_steps", DEFAULT_STEPS)
    boundary = "-boundary" if params.get("prepare.backtrack.placement") == "boundary" else ""
    return f"{data_kind(params)}{check}" + (f"-{steps}" if steps != DEFAULT_STEPS else "") + boundary


def order(config: dict) -> tuple:
    params = config["params"]
    return (params.get("sft.max_steps", DEFAULT_STEPS), params.get("prepare.backtrack.placement", "example"),
            ["base", *KINDS].index(data_kind(params)), bool(params.get("prepare.check_steps")))


def cell(config: dict, key: str, digits: int = 2) -> str:
    estimate = config["metrics"].get(METRICS + key)
    if estimate is None or estimate["mean"] is None:
        return "-"
    width = estimate["ci95_half_width"]
    return f"{estimate['mean']:.{digits}f}" + ("" if width is None else f" ± {width:.{digits}f}")


def own_kind(config: dict) -> str:
    """The probe block that reads a config against its own kind: near misses for the error-free data."""
    kind = data_kind(config["params"])
    return "plausible" if kind == "base" else kind


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.json of python -m llmhalluc.seeds report")
    parser.add_argument("--model", default="sft", help="the model block to tabulate (sft, grpo)")
    args = parser.parse_args()
    configs = sorted(json.loads(args.report.read_text()), key=order)
    m = args.model

    print(f"Decoders, {m} model (the probe injects the kind the model was trained on; near misses for base):\n")
    print(table(
        ["config", "seeds", "accuracy greedy", "accuracy rollback", "retries / problem", "detection AUROC",
         "correction greedy", "correction rollback", "false positives greedy", "false positives rollback"],
        [[name(c["params"]), str(len(c["runs"])), cell(c, f"{m}.accuracy"), cell(c, f"{m}.rollback.accuracy"),
          cell(c, f"{m}.rollback.retries_per_problem"),
          *(cell(c, f"{m}.probe.{own_kind(c)}.{k}") for k in (
              "detection_auroc", "correction_right", "correction_rollback_right", "false_positive",
              "false_positive_rollback"))] for c in configs]))

    print(f"\nDetection AUROC by the kind injected, {m} model (rows: the kind the SFT data taught):\n")
    print(table(["config", *KINDS],
                [[name(c["params"]), *(cell(c, f"{m}.probe.{k}.detection_auroc") for k in KINDS)] for c in configs]))

    print(f"\nWhere the knowledge is, {m} model, on the kind each model was trained on (near misses for base):\n")
    print(table(
        ["config", "P(backtrack) AUROC", "decision state AUROC", "surprise AUROC", "check recomputed",
         "counting", "repair in context", "repair resolved"],
        [[name(c["params"]), *(cell(c, f"{m}.probe.{own_kind(c)}.{k}") for k in (
            "detection_auroc", "detection_hidden_auroc", "detection_surprise_auroc", "check_recomputed",
            "counting_exact", "repair_step", "repair_step_resolved"))] for c in configs]))


if __name__ == "__main__":
    main()
