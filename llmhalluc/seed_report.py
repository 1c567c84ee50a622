"""The seeds report: finished experiments grouped into configs (same params but the seeds), and per config and
metric the mean with its Student-t 95 % interval (llmhalluc.statistics), as a markdown table, a JSON file
and an SVG plot.

A config compared with the reference config is called different only when the intervals do not
overlap (conservative on purpose: a difference inside the noise is reported as no difference).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmhalluc.experiments import Run, runs_from_exp_show
from llmhalluc.statistics import Estimate, compare, mean_ci

#: Every seed of the default pipeline, one per stage that draws random numbers; all take the same value.
SEED_KEYS = ("prepare.seed", "sft.seed", "sft.tiny_model.seed", "grpo.seed", "eval.seed")
#: What the report shows by default: the accuracy of each model and the backtracking diagnostics.
DEFAULT_METRICS = (
    "*.accuracy",
    "*.probe.*.detection_auroc",
    "*.probe.*.detection_hidden_auroc",
    "*.probe.*.detection_surprise_auroc",
    "*.probe.*.check_recomputed",
    "*.probe.*.counting_exact",
    "*.probe.*.repair_step",
    "*.probe.*.repair_step_resolved",
    "*.probe.*.correction_right",
    "*.probe.*.false_positive",
    "*.probe.*.correction_rollback_right",
    "*.probe.*.false_positive_rollback",
    "*.rollback.retries_per_problem",
)
REPORT_DIR = Path("reports/seeds")




@dataclass
class Config:
    """The runs of one config (same params but the seeds) and their estimates per metric."""

    label: str
    params: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    estimates: dict[str, Estimate] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return sorted({tuple(r.params.get(k) for k in SEED_KEYS) for r in self.runs})


def group(runs: Iterable[Run], seed_keys: Sequence[str] = SEED_KEYS) -> list[Config]:
    """Runs grouped by their params with the seed keys left out; each config labelled by what sets it apart."""
    groups: dict[str, Config] = {}
    for run in runs:
        params = {k: v for k, v in run.params.items() if k not in seed_keys}
        key = json.dumps(params, sort_keys=True, default=str)
        groups.setdefault(key, Config(label="", params=params)).runs.append(run)
    configs = list(groups.values())
    varying = sorted({k for c in configs for k in c.params
                      if len({json.dumps(o.params.get(k), default=str) for o in configs}) > 1})
    for config in configs:
        config.label = ", ".join(f"{k}={_text(config.params.get(k))}" for k in varying) or "default"
    return sorted(configs, key=lambda c: c.label)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value).lower() if isinstance(value, bool) \
        else str(value)


def select_metrics(configs: Sequence[Config], patterns: Sequence[str]) -> list[str]:
    """Metric names (file prefix dropped where it is unique) that match any pattern, in a stable order."""
    names = sorted({m for c in configs for r in c.runs for m in r.metrics})
    chosen = []
    for pattern in patterns:
        for name in names:
            short = name.split(":", 1)[-1]
            if (fnmatch.fnmatchcase(short, pattern) or fnmatch.fnmatchcase(name, pattern)) and name not in chosen:
                chosen.append(name)
    return chosen


def estimate(configs: Sequence[Config], metrics: Sequence[str]) -> None:
    for config in configs:
        for metric in metrics:
            values = [r.metrics[metric] for r in config.runs if metric in r.metrics]
            if values:
                config.estimates[metric] = mean_ci(values)


def markdown(configs: Sequence[Config], metrics: Sequence[str], reference: Config | None) -> str:
    """One row per config, one column per metric: mean ± 95 % CI half-width; marks where it differs from reference."""
    short = [m.split(":", 1)[-1] for m in metrics]
    lines = ["| config | seeds | " + " | ".join(short) + " |", "|---|---|" + "---|" * len(metrics)]
    for config in configs:
        cells = []
        for metric in metrics:
            est = config.estimates.get(metric)
            if est is None:
                cells.append("-")
                continue
            cell = est.text()
            if reference is not None and config is not reference and metric in reference.estimates:
                verdict = compare(reference.estimates[metric], est)
                cell += {"higher": " ↑", "lower": " ↓"}.get(verdict, "")
            cells.append(cell)
        lines.append(f"| {config.label} | {len(config.runs)} | " + " | ".join(cells) + " |")
    notes = ["", "Mean ± half-width of the Student-t 95 % confidence interval of the mean over the seeds "
             "(one DVC experiment per seed; every seed key set alike: " + ", ".join(SEED_KEYS) + ")."]
    if reference is not None:
        notes.append(f"↑ / ↓: the interval lies wholly above / below that of `{reference.label}`; "
                     "no mark: no difference at this number of seeds.")
    return "\n".join(lines + notes) + "\n"


def svg(configs: Sequence[Config], metrics: Sequence[str]) -> str:
    """A small-multiples dot plot (one panel per metric, one row per config) with 95 % CI whiskers."""
    label_w, panel_w, row_h, top = 260, 220, 22, 40
    width = label_w + panel_w * len(metrics) + 20
    height = top + row_h * len(configs) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for row, config in enumerate(configs):
        y = top + row_h * row + row_h / 2
        label = config.label if len(config.label) <= 48 else "…" + config.label[-47:]  # the end tells configs apart
        parts.append(f'<text x="{label_w - 8}" y="{y + 4}" text-anchor="end">{_escape(label)}</text>')
    for col, metric in enumerate(metrics):
        x0 = label_w + panel_w * col + 10
        span = panel_w - 30
        values = [v for c in configs if (e := c.estimates.get(metric))
                  for v in (e.mean, e.low if e.low is not None else e.mean, e.high if e.high is not None else e.mean)]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5

        def scale(v: float, x0: float = x0, low: float = low, high: float = high, span: float = span) -> float:
            return x0 + (v - low) / (high - low) * span

        parts.append(f'<text x="{x0 + span / 2}" y="{top - 22}" text-anchor="middle" font-weight="bold">'
                     f'{_escape(metric.split(":", 1)[-1])}</text>')
        parts.append(f'<text x="{x0}" y="{top - 8}" fill="#666">{low:.3g}</text>')
        parts.append(f'<text x="{x0 + span}" y="{top - 8}" text-anchor="end" fill="#666">{high:.3g}</text>')
        parts.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{height - 30}" stroke="#ddd"/>')
        for row, config in enumerate(configs):
            est = config.estimates.get(metric)
            if est is None:
                continue
            y = top + row_h * row + row_h / 2
            if est.half_width is not None:
                parts.append(f'<line x1="{scale(est.low):.1f}" y1="{y}" x2="{scale(est.high):.1f}" y2="{y}" '
                             'stroke="#1f77b4" stroke-width="2"/>')
            parts.append(f'<circle cx="{scale(est.mean):.1f}" cy="{y}" r="3.5" fill="#1f77b4"/>')
    parts.append(f'<text x="10" y="{height - 10}" fill="#666">dots: mean over seeds; bars: 95 % CI of the mean</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def report(entries: list[dict[str, Any]], patterns: Sequence[str], out_dir: Path,
           reference_label: str | None = None) -> list[Config]:
    """Write report.md, report.json and report.svg into out_dir; return the configs."""
    configs = group(runs_from_exp_show(entries))
    if not configs:
        raise SystemExit("error: no finished experiments with metrics in `dvc exp show`; queue some with "
                         "`python -m llmhalluc.seeds queue` and run them with `dvc queue start`")
    metrics = select_metrics(configs, patterns)
    if not metrics:
        raise SystemExit(f"error: no metric matches {', '.join(patterns)}; pick names shown by `dvc metrics show`")
    estimate(configs, metrics)
    reference = None
    if reference_label is not None:
        reference = next((c for c in configs if c.label == reference_label), None)
        if reference is None:
            raise SystemExit(f"error: --reference {reference_label!r} is not a config; configs: "
                             + "; ".join(c.label for c in configs))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown(configs, metrics, reference), encoding="utf-8")
    (out_dir / "report.svg").write_text(svg(configs, metrics), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps([{
        "config": c.label, "params": {k: c.params[k] for k in sorted(c.params)},
        "runs": [r.name for r in c.runs], "seeds": [list(s) for s in c.seeds],
        "metrics": {m: {"mean": e.mean, "ci95_half_width": e.half_width, "std": e.std, "n": e.n,
                        "one_run_95_half_width": e.predict_half_width}
                    for m, e in c.estimates.items()},
    } for c in configs], indent=2) + "\n", encoding="utf-8")
    return configs
