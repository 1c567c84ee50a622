"""Re-run eval's probe on the models of finished DVC experiments, with this checkout's eval code.

Why: a probe metric newer than a sweep's models (`repair_step_resolved`, the step written with the
retracted tokens gone from the context, for one) can be read on those models as they are, where
re-running the sweep would retrain every model (train_sft depends on the diagnostics module).
This script materialises each experiment's data/prepared, models/sft and models/merged from the
DVC cache (read only, by the md5s in the experiment's dvc.lock), runs `stages/eval.py` of this
checkout on them in a scratch folder with the probe on and the sampled / own-error diagnostics
off, and writes one JSON per experiment.

    python reports/repair-context/measure.py --repo ../sweep3 --out reports/repair-context/runs \
        tok-syn-seed0 tok-syn-seed1 ...
    python reports/repair-context/measure.py --summarize reports/repair-context/runs   # the table, mean ± 95 % CI
    python reports/repair-context/measure.py --summarize reports/detection/runs \
        --keys detection_auroc,detection_hidden_auroc                                   # any probe metrics
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
OUTS = ("data/prepared", "models/sft", "models/merged")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def experiment_ref(repo: Path, name: str) -> str:
    refs = [r for r in git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split() if r.endswith("/" + name)]
    if len(refs) != 1:
        raise SystemExit(f"{repo}: {len(refs)} experiments named {name!r}")
    return refs[0]


def cached(repo: Path, md5: str) -> Path:
    for base in (repo / ".dvc/cache/files/md5", repo / ".dvc/cache"):
        if (base / md5[:2] / md5[2:]).exists():
            return base / md5[:2] / md5[2:]
    raise SystemExit(f"{repo}: {md5} is not in the DVC cache")


def materialise(repo: Path, lock: dict, path: str, into: Path) -> None:
    """One directory out of dvc.lock, copied file by file from the cache."""
    entry = next(o for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == path)
    for item in json.loads(cached(repo, entry["md5"]).read_text()):
        target = into / path / item["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached(repo, item["md5"]), target)


def measure(repo: Path, name: str, problems: int) -> dict:
    ref = experiment_ref(repo, name)
    yaml = YAML(typ="safe")
    lock = yaml.load(git(repo, "show", f"{ref}:dvc.lock"))
    params = yaml.load(git(repo, "show", f"{ref}:params.yaml"))
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for path in OUTS:
            materialise(repo, lock, path, work)
        for folder in ("stages", "llmhalluc", "configs"):
            shutil.copytree(ROOT / folder, work / folder)
        params["eval"].pop("answer_pattern", None)  # an experiment from before prepare.answer_pattern: the default
        params["eval"]["probe"] = {**params["eval"]["probe"], "enabled": True, "problems": problems,
                                   "kinds": ["plausible"]}  # the near misses these sweeps trained and probed on
        params["eval"]["sampled"]["enabled"] = False
        params["eval"]["own_errors"]["enabled"] = False
        with (work / "params.yaml").open("w") as handle:
            YAML().dump(params, handle)
        run = subprocess.run([sys.executable, "-m", "stages.eval"], cwd=work, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{name}: eval failed:\n{run.stderr[-3000:]}")
        metrics = json.loads((work / "metrics/eval.json").read_text())
    return {"experiment": name, "problems": problems,
            **{model: metrics[model]["probe"]["plausible"] for model in ("sft", "grpo") if model in metrics}}


def summarize(folder: Path, keys: tuple[str, ...] = ("repair_step", "repair_step_resolved")) -> str:
    """One row per config (experiment name without -seedN): each probe key of each model, mean ± 95 % CI."""
    import re

    from llmhalluc.statistics import mean_ci

    groups: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        groups.setdefault(re.sub(r"-seed\d+$", "", result["experiment"]), []).append(result)

    def cell(runs: list[dict], model: str, key: str) -> str:
        estimate = mean_ci([r[model][key] for r in runs])
        width = "n/a" if estimate.half_width is None else f"{estimate.half_width:.3f}"
        return f"{estimate.mean:.3f} ± {width}"

    columns = [(model, key) for model in ("sft", "grpo") for key in keys]
    lines = ["| config | seeds | " + " | ".join(f"{m.upper()} {k}" for m, k in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for config, runs in groups.items():
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(cell(runs, m, k) for m, k in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*")
    parser.add_argument("--repo", type=Path, help="the DVC repository the experiments ran in")
    parser.add_argument("--out", type=Path, help="folder for one JSON per experiment")
    parser.add_argument("--problems", type=int, default=50, help="eval.probe.problems (the sweep's)")
    parser.add_argument("--summarize", type=Path, help="print the table of this folder's JSONs and stop")
    parser.add_argument("--keys", default="repair_step,repair_step_resolved",
                        help="probe metrics in the table, comma-separated")
    args = parser.parse_args()
    if args.summarize:
        sys.path.insert(0, str(ROOT))
        print(summarize(args.summarize, tuple(args.keys.split(","))))
        return
    if not (args.experiments and args.repo and args.out):
        parser.error("give experiments, --repo and --out (or --summarize FOLDER)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.experiments:
        result = measure(args.repo.resolve(), name, args.problems)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, {m: {k: result[m][k] for k in ("repair_step", "repair_step_resolved", "detection_auroc",
                                                    "detection_hidden_auroc")} for m in ("sft", "grpo")})


if __name__ == "__main__":
    main()
