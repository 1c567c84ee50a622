"""The repo's promises that no single module owns: dvc.yaml vs params.yaml, README vs CI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from llmhalluc.params import load_section
from tests.conftest import ROOT, dvc_yaml, load_script

STAGE_SECTION = {"prepare": "prepare", "train_sft": "sft", "train_grpo": "grpo", "merge": "merge", "eval": "eval"}


def _dvc() -> dict:
    return dvc_yaml(ROOT)


def test_each_stage_tracks_only_its_own_section_and_runs_its_script():
    stages = _dvc()["stages"]
    assert list(stages) == list(STAGE_SECTION)
    for stage, section in STAGE_SECTION.items():
        assert stages[stage]["params"] == [section]
        assert stages[stage]["cmd"] == f"python -m stages.{stage}"  # the copy's code in a queued experiment
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


def _pip_install_args(command: str) -> list[str]:
    """The arguments of the `pip install` step of a README command line."""
    steps = [shlex.split(step) for step in command.split("&&")]
    [args] = [step[2:] for step in steps if step[:2] == ["pip", "install"]]
    return args


def test_ci_runs_the_readme_test_command_as_written():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv .*)$", readme, re.MULTILINE)
    assert len(commands) == 2 and commands[0].endswith("dvc repro") and commands[1].endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci
    assert "ruff check ." in ci and ci.index("ruff check .") < ci.index(commands[1]), "CI lints before the tests"
    # both install the CPU torch, and CI checks the test command's install (a superset of the pipeline's)
    install, test_install = (_pip_install_args(c) for c in commands)
    assert install[:2] == test_install[:2] == ["-r", "requirements/cpu.txt"]
    [check] = [shlex.split(line) for line in ci if ".ci/check_cpu_install.py" in line]
    assert check[2:] == test_install


def test_the_cpu_requirements_pin_a_cpu_torch_that_pyproject_admits():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    lines = [line for line in (ROOT / "requirements" / "cpu.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    [torch] = [Requirement(line) for line in lines if line.startswith("torch")]
    [pin] = torch.specifier
    assert pin.operator == "==" and pin.version.endswith("+cpu")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [declared] = [Requirement(d) for d in dependencies if Requirement(d).name == "torch"]
    assert declared.specifier.contains(pin.version), f"{pin} is outside pyproject's torch{declared.specifier}"


def test_the_cpu_install_check_names_what_a_gpu_build_brings():
    """.ci/check_cpu_install.py on pip reports: CUDA runtime packages, triton and a +cu / +rocm torch are refused."""
    check = load_script(".ci/check_cpu_install.py")

    def report(*packages: str) -> dict:
        return {"install": [{"metadata": {"name": n, "version": v}} for n, v in (p.split() for p in packages)]}

    cpu = ("torch 2.13.0+cpu", "nvidia-ml-py 13.615.71", "numpy 2.4.6", "dvclive 3.49.1")
    assert check.cuda_packages(report(*cpu)) == []
    assert check.cuda_packages(report("torch 2.13.0", "numpy 2.4.6")) == []  # macOS: PyPI's torch has no CUDA
    assert check.cuda_packages(report(*cpu, "nvidia-cublas 13.1.1.3", "triton 3.8.0", "cuda_bindings 13.5.0")) == [
        "nvidia-cublas 13.1.1.3", "triton 3.8.0", "cuda-bindings 13.5.0"]
    assert check.cuda_packages(report("torch 2.13.0+cu128", "pytorch-triton-rocm 3.4.0")) == [
        "torch 2.13.0+cu128", "pytorch-triton-rocm 3.4.0"]
    assert check.cuda_packages(report("torch 2.13.0+rocm6.4")) == ["torch 2.13.0+rocm6.4"]


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


def _comment(lines: list[str], number: int) -> str:
    """The comment of the key on line `number` (1-based): what follows ` #` there, with the comment-only lines
    indented under it; else the comment-only lines right above it, at its own indent."""
    line = lines[number - 1]
    indent = len(line) - len(line.lstrip())
    parts = [line.split(" #", 1)[1]] if " #" in line else []
    below = number
    while parts and below < len(lines) and lines[below].lstrip().startswith("#") \
            and len(lines[below]) - len(lines[below].lstrip()) > indent:
        parts.append(lines[below].lstrip()[1:])
        below += 1
    above = number - 2
    while not parts and above >= 0 and lines[above].lstrip().startswith("#") \
            and len(lines[above]) - len(lines[above].lstrip()) == indent:
        above -= 1
    if not parts:
        parts = [line.lstrip()[1:] for line in lines[above + 1: number - 1]]
    return " ".join(part.strip() for part in parts)


def _listed_choices(comment: str) -> list[str]:
    """The values a comment lists as `a | b | c` (each may be followed by `(why)` or `: what it does`)."""
    segments = re.sub(r"\([^()]*\)", "", comment).split("|")
    if len(segments) < 2:
        return []
    listed = []
    for index, segment in enumerate(segments):
        words = segment.split()
        word = words[0] if index or words[0].endswith(":") else words[-1]
        listed.append(word.strip(":;,."))
    return listed


def test_every_project_key_in_params_yaml_has_a_comment_that_agrees_with_its_declaration():
    """params.yaml's comments and sections.param's help are two homes of a key's documentation (one for the
    reader of the file, one for the code): every project key the file writes has a comment, and a key with a
    closed set of values (Literal) names every allowed value and lists no other (`a | b | c`). The default
    each side shows is held equal by test_the_schema_defaults_are_the_values_params_yaml_spells_out. A nested
    section's header may go without a comment: its keys carry theirs. TRL's keys are documented by TRL."""
    from llmhalluc.params.schema import FieldSpec, describe_dataclass
    from llmhalluc.params.sections import PROJECT_PARAMS
    from llmhalluc.params.yaml12 import read_params_file

    file = read_params_file(ROOT / "params.yaml")
    lines = (ROOT / "params.yaml").read_text().splitlines()
    wrong = []

    def walk(fields: dict[str, FieldSpec], data: dict, path: tuple[str, ...]) -> None:
        for key, value in data.items():
            if key not in fields:
                continue  # a TRL key
            where, dotted, kind = (*path, key), ".".join((*path, key)), fields[key].type
            if kind["t"] == "section":
                walk({k: FieldSpec(**v) for k, v in kind["fields"].items()}, value, where)
                continue
            comment = _comment(lines, file.lines[where])
            if not comment:
                wrong.append(f"params.yaml:{file.lines[where]}: {dotted} has no comment")
                continue
            members = [kind] if kind["t"] == "choice" else [m for m in kind.get("of", []) if m["t"] == "choice"]
            allowed = [str(v) for m in members for v in m["values"]]
            if not allowed:
                continue
            unnamed = [v for v in allowed if not re.search(rf"(?<![\w-]){re.escape(v)}(?![\w-])", comment)]
            foreign = [v for v in _listed_choices(comment) if v not in allowed]
            if unnamed or foreign:
                wrong.append(f"params.yaml:{file.lines[where]}: {dotted}: the comment {comment!r} does not name "
                             f"{unnamed} / lists {foreign}; allowed: {' | '.join(allowed)}")

    for name, cls in PROJECT_PARAMS.items():
        walk(describe_dataclass(cls), file.data[name], (name,))
    assert not wrong, "\n".join(wrong)


def test_the_comment_reader_sees_each_form():
    lines = ["  # above, line one", "  # line two", "  key: 1", "  other: 2   # after # with a hash",
             "                # and under it", "  choice: a    # a: first | b (second) | c: third"]
    assert _comment(lines, 3) == "above, line one line two"
    assert _comment(lines, 4) == "after # with a hash and under it"
    assert _listed_choices(_comment(lines, 6)) == ["a", "b", "c"]
    assert _listed_choices("what it retracts: token (one) | step | retry; recorded") == ["token", "step", "retry"]
