"""The repo's promises that no single module owns: dvc.yaml vs params.yaml, README vs CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from ruamel.yaml import YAML

from llmhalluc.params import load_section
from tests.conftest import ROOT, dvc_yaml

STAGE_SECTION = {"prepare": "prepare", "train_sft": "sft", "train_grpo": "grpo", "merge": "merge", "eval": "eval"}


def _dvc() -> dict:
    return dvc_yaml(ROOT)


def test_each_stage_tracks_only_its_own_section_and_runs_its_script():
    stages = _dvc()["stages"]
    assert list(stages) == list(STAGE_SECTION)
    for stage, section in STAGE_SECTION.items():
        assert stages[stage]["params"] == [section]
        assert stages[stage]["cmd"] == f"python stages/{stage}.py"
        assert f"stages/{stage}.py" in stages[stage]["deps"]


def _outs(stage: dict) -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])}


def test_out_paths_in_params_match_dvc_outs():
    stages = _dvc()["stages"]
    params = {s: load_section(s, ROOT / "params.yaml", for_run=False) for s in STAGE_SECTION.values()}
    assert params["prepare"].project.out_dir in _outs(stages["prepare"])
    for stage, section in (("train_sft", "sft"), ("train_grpo", "grpo"), ("merge", "merge")):
        model_dir = params[section].project.out_dir if section == "merge" else params[section].project.model_dir
        assert {model_dir, f"{model_dir}.run.json"} <= _outs(stages[stage])  # the model, and its run record beside it
    for stage, section in (("train_sft", "sft"), ("train_grpo", "grpo")):
        # TRL's output_dir is the stage's scratch (checkpoints, the curves while training), never an out: DVC
        # deletes outs before a stage runs (no resume), and a persisted one keeps the stage out of the run-cache.
        assert params[section].trl["output_dir"] not in _outs(stages[stage])
    assert {params["eval"].project.out_dir, params["eval"].project.metrics_file} <= _outs(stages["eval"])


def test_every_out_is_cached_and_none_persisted():
    """A run-cache entry for every stage (persist rules one out), and every out back from `dvc checkout` after a
    stage fails (DVC deletes a stage's outs before it runs; checkout restores only cached ones)."""
    for name, stage in _dvc()["stages"].items():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            assert options.get("cache", True) and not options.get("persist", False), (name, out)


def test_a_path_set_in_params_moves_the_out_and_every_edge_to_it(tmp_path):
    """`dvc exp run -S sft.model_dir=...` needs no dvc.yaml edit: the out and the stages downstream follow."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    text = (ROOT / "params.yaml").read_text()
    for old, new in (("model_dir: models/sft ", "model_dir: runs/a/sft "), ("out_dir: models/merged ", "out_dir: "
                     "runs/a/merged "), ("plots_dir: plots/eval ", "plots_dir: runs/a/plots ")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "params.yaml").write_text(text)
    moved = dvc_yaml(tmp_path)
    stages = moved["stages"]
    assert "runs/a/sft" in _outs(stages["train_sft"]) and "models/sft" not in _outs(stages["train_sft"])
    for stage in ("train_grpo", "merge", "eval"):
        assert "runs/a/sft" in stages[stage]["deps"] and "models/sft" not in stages[stage]["deps"], stage
    assert "runs/a/merged" in _outs(stages["merge"]) and "runs/a/merged" in stages["eval"]["deps"]
    plotted = {path for plot in moved["plots"] for spec in plot.values() for path in (spec.get("y") or {})
               if isinstance(spec.get("y"), dict)}
    assert "runs/a/plots/diagnostics.csv" in plotted and not any(p.startswith("plots/eval") for p in plotted)


def test_ci_runs_the_readme_test_command_as_written():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv .*)$", readme, re.MULTILINE)
    assert len(commands) == 2 and commands[0].endswith("dvc repro") and commands[1].endswith("pytest")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_schema_defaults_are_the_values_params_yaml_spells_out():
    """One default per project key: a key left out of params.yaml gets the same value the file shows.

    Keys params.yaml leaves out (the launcher's optional config_file / main_process_port) have their
    default in the schema alone; every key it writes must agree with the schema's default, so the
    tiny model, the set sizes and the rest cannot differ between the file, the schema and the builder.
    """
    import dataclasses

    from llmhalluc.params.sections import PROJECT_PARAMS

    params = YAML(typ="safe").load((ROOT / "params.yaml").read_text())
    disagree = []

    def walk(cls: type, data: dict, path: str) -> None:
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                walk(type(default), data[f.name] or {}, f"{path}{f.name}.")
            elif default != data[f.name]:
                disagree.append(f"{path}{f.name}: schema {default!r}, params.yaml {data[f.name]!r}")

    for name, cls in PROJECT_PARAMS.items():
        walk(cls, params[name], f"{name}.")
    assert not disagree, "\n".join(disagree)
