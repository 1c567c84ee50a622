"""DVC experiments as data: the finished runs of `dvc exp show --json`, each with its params and metrics flat.

What the seeds report groups into configs, and what any other summary of experiments reads.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One finished experiment: its name, params (flattened) and metrics (flattened)."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def runs_from_exp_show(entries: list[dict[str, Any]], params_file: str = "params.yaml") -> list[Run]:
    """The finished experiments in `dvc exp show --json` output (queued, running and failed ones are skipped)."""
    runs = []
    for commit in entries:
        for experiment in commit.get("experiments") or []:
            executor = experiment.get("executor") or {}
            if executor and executor.get("state") != "success":  # queued, running or failed: no final metrics
                continue
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {}
                for file, content in (data.get("metrics") or {}).items():
                    metrics.update({f"{file}:{k}": v for k, v in flatten((content or {}).get("data")).items()
                                    if isinstance(v, int | float) and not isinstance(v, bool)})
                params = flatten(((data.get("params") or {}).get(params_file) or {}).get("data"))
                if rev.get("error") or not metrics or not params:
                    continue
                runs.append(Run(name=rev.get("name") or experiment.get("name") or rev["rev"][:7],
                                params=params, metrics=metrics))
    return runs


def exp_show(repo: str | Path = ".") -> list[dict[str, Any]]:
    """`dvc exp show --json` of the repo (experiments of the current commit)."""
    result = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: dvc exp show failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout)


