"""The repo's promises that no single module owns: dvc.yaml vs params.yaml, README vs CI."""

from __future__ import annotations

import re

from ruamel.yaml import YAML

from llmhalluc.params import load_section
from tests.conftest import ROOT

STAGE_SECTION = {"prepare": "prepare", "train_sft": "sft", "train_grpo": "grpo", "merge": "merge", "eval": "eval"}


def _dvc() -> dict:
    return YAML(typ="safe").load((ROOT / "dvc.yaml").read_text())


def test_each_stage_tracks_only_its_own_section_and_runs_its_script():
    stages = _dvc()["stages"]
    assert list(stages) == list(STAGE_SECTION)
    for stage, section in STAGE_SECTION.items():
        assert stages[stage]["params"] == [section]
        assert stages[stage]["cmd"] == f"python stages/{stage}.py"
        assert f"stages/{stage}.py" in stages[stage]["deps"]


def test_out_paths_in_params_match_dvc_outs():
    stages = _dvc()["stages"]

    def outs(stage):
        return {next(iter(o)) if isinstance(o, dict) else o for o in stages[stage]["outs"]}

    params = {s: load_section(s, ROOT / "params.yaml", for_run=False) for s in STAGE_SECTION.values()}
    assert params["prepare"].project.out_dir in outs("prepare")
    assert {params["sft"].project.model_dir, params["sft"].trl["output_dir"]} <= outs("train_sft")
    assert {params["grpo"].project.model_dir, params["grpo"].trl["output_dir"]} <= outs("train_grpo")
    assert params["merge"].project.out_dir in outs("merge")
    assert params["eval"].project.out_dir in outs("eval")
    metrics = {next(iter(m)) for m in stages["eval"]["metrics"]}
    assert params["eval"].project.metrics_file in metrics


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
