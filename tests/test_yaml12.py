"""params.yaml is read as YAML 1.2, the dialect DVC writes."""

from __future__ import annotations

from pathlib import Path

from llmhalluc.params import load_section
from llmhalluc.params.yaml12 import read_params_file
from tests.conftest import edit


def test_dvc_style_float_is_a_float(tmp_path: Path, params_text: str):
    # `dvc exp run -S grpo.learning_rate=1e-6` writes exactly this; PyYAML would read a string.
    (tmp_path / "params.yaml").write_text(edit(params_text, "learning_rate: 0.00002", "learning_rate: 1e-06"))
    section = load_section("grpo", tmp_path / "params.yaml", for_run=False)
    assert section.trl["learning_rate"] == 1e-06
    assert type(section.trl["learning_rate"]) is float


def test_yes_is_a_string_and_lines_are_kept(tmp_path: Path):
    (tmp_path / "p.yaml").write_text("a:\n  b: yes\n  c: 1e-6\n  d: 7\n")
    parsed = read_params_file(tmp_path / "p.yaml")
    assert parsed.data == {"a": {"b": "yes", "c": 1e-06, "d": 7}}
    assert type(parsed.data["a"]["d"]) is int
    assert parsed.where(("a", "c")) == f"{tmp_path / 'p.yaml'}:3"


def test_dry_run_prints_every_grpo_field(tmp_path: Path, params_text: str):
    import dataclasses
    import json

    from trl import GRPOConfig

    from tests.conftest import run_stage_script

    (tmp_path / "params.yaml").write_text(edit(params_text, "learning_rate: 0.00002", "learning_rate: 1e-06"))
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = {f.name for f in dataclasses.fields(GRPOConfig) if f.init and not f.name.startswith("_")}
    assert expected <= set(printed)
    assert printed["learning_rate"] == 1e-06 and printed["num_generations"] == 4
    assert printed["reward_funcs"] == ["accuracy", "format"]  # project keys beside TRL's
    assert not (tmp_path / "models").exists()  # a dry run writes nothing
