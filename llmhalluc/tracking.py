"""What training leaves for `dvc plots` and `dvc metrics`: curves from the trainer's log history."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_curve(path: str | Path, log_history: list[dict[str, Any]], key: str) -> int:
    """Write (step, key) rows for every log entry that has key; return the number of rows.

    DVC plots a CSV with `x: step`; one file per curve keeps `dvc plots diff` readable.
    """
    rows = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", key])
        writer.writerows(rows)
    return len(rows)
