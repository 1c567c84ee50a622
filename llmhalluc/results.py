"""The key results of eval in a table that fits a terminal: per model at the end of eval, per experiment here.

    python -m llmhalluc.results                 # the experiments of the current commit, side by side
    python -m llmhalluc.results -A              # of every commit (any `dvc exp show` option passes through)
    python -m llmhalluc.results --json          # the same rows as JSON

`dvc exp show` lists every param and every metric (300+ columns on the default pipeline) and a
terminal shows `… … …`. This prints, for each experiment (the workspace, each commit, each
experiment of it) and each model of metrics/eval.json, five numbers: greedy accuracy, the rollback
decoder's accuracy, detection AUROC of the first probed kind (P(backtrack) after a wrong vs a right
step), correction and false positives of that probe, and the params the experiment changed against
its commit. It reads `dvc exp show --json`; a metric an experiment does not have is `-`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

#: The eval metrics file whose model blocks are read (params.yaml's eval.metrics_file by default).
METRICS_FILE = "metrics/eval.json"
#: Column -> where it is in a model's block of metrics/eval.json ("probe" is its first kind's block).
KEY_METRICS = {
    "accuracy": ("accuracy",),
    "rollback": ("rollback", "accuracy"),
    "detection": ("probe", "detection_auroc"),
    "correction": ("probe", "correction_right"),
    "false pos": ("probe", "false_positive"),
}


def key_results(block: dict[str, Any]) -> dict[str, Any]:
    """A model's key results from its block: KEY_METRICS, and `probe`, the kind the probe columns are of."""
    kind, first = next(iter((block.get("probe") or {}).items()), (None, {}))
    found: dict[str, Any] = {}
    for column, path in KEY_METRICS.items():
        node: Any = {**block, "probe": first}
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        found[column] = node
    return {**found, "probe": kind}


def model_blocks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-model blocks of an eval metrics file (every entry with an accuracy; not transitions)."""
    return {name: block for name, block in metrics.items() if isinstance(block, dict) and "accuracy" in block}


def cell(value: Any) -> str:
    """A value as a table shows it: 3 decimals, `-` for a missing or undefined (null) one."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Rows under a header, columns aligned (text left, numbers right), two spaces apart."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) or row[i] is None for row in rows)
               for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(v.rjust(w) if n else v.ljust(w)
                                  for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(header), *(line(r) for r in cells)])


def model_table(metrics: dict[str, Any], indent: str = "") -> str:
    """The key results of each model of an eval metrics file, one row per model."""
    rows = []
    for name, block in model_blocks(metrics).items():
        found = key_results(block)
        rows.append([name, *(found[c] for c in KEY_METRICS), found["probe"]])
    return text_table(["model", *KEY_METRICS, "probe"], rows, indent)


# --------------------------------------------------------------------------- experiments


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def experiments(shown: list[dict[str, Any]], metrics_file: str = METRICS_FILE,
                params_file: str = "params.yaml") -> list[dict[str, Any]]:
    """`dvc exp show --json` as rows: name, the params changed against its commit, and its model blocks.

    The workspace is compared with the first commit shown (HEAD); a commit is its own baseline.
    """
    def read(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        data = entry.get("data") or {}
        params = flatten(((data.get("params") or {}).get(params_file) or {}).get("data"))
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data") or {}
        return params, model_blocks(metrics), entry.get("error") and str(entry["error"].get("msg", "error"))

    def changed(params: dict[str, Any], base: dict[str, Any]) -> list[str]:
        return [f"{k}={_param(v)}" for k, v in params.items() if base.get(k) != v]

    commits = [e for e in shown if e.get("rev") != "workspace"]
    head = read(commits[0])[0] if commits else {}
    rows = []
    for entry in shown:
        params, blocks, error = read(entry)
        workspace = entry.get("rev") == "workspace"
        name = "workspace" if workspace else entry.get("name") or entry.get("rev", "")[:7]
        base = head if workspace else params
        rows.append({"name": name, "changed": changed(params, base), "models": blocks, "error": error})
        for experiment in entry.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            for rev in experiment.get("revs") or []:
                own, blocks, error = read(rev)
                label = rev.get("name") or experiment.get("name") or rev.get("rev", "")[:7]
                rows.append({"name": label, "changed": changed(own, params), "models": blocks,
                             "error": error or (state if state not in (None, "success") else None)})
    return rows


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def experiment_table(rows: list[dict[str, Any]]) -> str:
    """One line per experiment and model: the key results, then what the experiment changed (on its first line)."""
    lines = []
    for row in rows:
        blocks = row["models"] or {"-": {}}
        note = ", ".join(row["changed"]) or ("(" + row["error"] + ")" if row["error"] else "")
        for index, (model, block) in enumerate(blocks.items()):
            found = key_results(block)
            lines.append([row["name"] if index == 0 else "", model, *(found[c] for c in KEY_METRICS),
                          note if index == 0 else ""])
    return text_table(["experiment", "model", *KEY_METRICS, "changed params"], lines)


def exp_show(options: Sequence[str]) -> list[dict[str, Any]]:
    """`dvc exp show --json` with the given options (-A, -n 3, --rev ...)."""
    result = subprocess.run(["dvc", "exp", "show", "--json", *options], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: dvc exp show failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout or "[]")


def build_parser() -> argparse.ArgumentParser:
    """The command line; options it does not know go to `dvc exp show` (parse_known_args)."""
    parser = argparse.ArgumentParser(prog="python -m llmhalluc.results", description=__doc__.splitlines()[0],
                                     epilog="Other options go to `dvc exp show` (e.g. -A, -n 3, --rev main).")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--metrics-file", default=METRICS_FILE, help=f"eval's metrics file (default {METRICS_FILE})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args, passed = build_parser().parse_known_args(argv)
    rows = experiments(exp_show(passed), args.metrics_file)
    if args.json:
        json.dump([{**r, "models": {m: key_results(b) for m, b in r["models"].items()}} for r in rows],
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(experiment_table(rows))
    print("(greedy and rollback accuracy; detection AUROC, correction and false positives of the first probed "
          "kind; every metric: dvc exp show, dvc metrics show)")


if __name__ == "__main__":
    main()
