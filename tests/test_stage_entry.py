"""dvc.yaml starts each stage as a module of the checkout it runs in (`python -m stages.<name>`).

`dvc exp run --queue` runs every experiment in a copy of the repository (.dvc/tmp/exps/...), while the
editable install points at the original checkout: the copy's stages must run the copy's llmhalluc.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, dvc_yaml, edit

MARK = "llmhalluc imported from the copy"


def copy_of_the_repo(tmp_path: Path) -> Path:
    """What an experiment's temporary copy holds (the tracked code and configs), with a llmhalluc that says so."""
    copy = tmp_path / "exps" / "tmp1234"
    for item in ("llmhalluc", "stages", "configs", "params.yaml", "dvc.yaml"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, copy / item)
    init = copy / "llmhalluc" / "__init__.py"
    init.write_text(init.read_text() + f"\nimport sys\n\nsys.stderr.write({MARK!r} + '\\n')\n")
    return copy


def test_a_stage_run_by_dvc_from_a_copy_imports_the_copys_llmhalluc(tmp_path: Path) -> None:
    copy = copy_of_the_repo(tmp_path)
    cmd = shlex.split(dvc_yaml(ROOT)["stages"]["prepare"]["cmd"])
    assert cmd[0] == "python"
    result = subprocess.run([sys.executable, *cmd[1:], "--dry-run"], cwd=copy, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert MARK in result.stderr
    # The control: the same script started by its path finds the installed llmhalluc (or none), not the copy's;
    # so the mark above is the module form's doing.
    script = subprocess.run([sys.executable, "stages/prepare.py", "--dry-run"], cwd=copy, capture_output=True,
                            text=True, timeout=300)
    assert MARK not in script.stderr


def test_a_stage_started_as_a_module_relaunches_its_ranks_as_a_module(tmp_path: Path, params_text: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under launcher.kind: accelerate the ranks start the way the stage did, so they run the copy's code too."""
    import importlib.util

    from llmhalluc import stage
    from llmhalluc.launcher import accelerate_command

    launches = []
    monkeypatch.setattr(stage, "launch", lambda name, launcher, script, argv, module: launches.append(
        (script, module)) or 0)
    main = ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("stages.train_sft")  # what `python -m stages.train_sft` sets
    monkeypatch.setitem(sys.modules, "__main__", main)
    text = edit(params_text, "    kind: python                # python: this process | accelerate: accelerate launch\n",
                "    kind: accelerate\n    config_file: configs/accelerate/cpu_2proc.yaml\n")
    (tmp_path / "params.yaml").write_text(edit(text, "  data_dir: data/prepared ", "  data_dir: configs "))  # exists
    monkeypatch.chdir(ROOT)  # the accelerate config and the registry, as the stage sees them
    with pytest.raises(SystemExit) as stopped:
        stage.run_stage("sft", lambda section: None, lambda section: {}, ["--params", str(tmp_path / "params.yaml")])
    assert stopped.value.code == 0 and launches == [("stages.train_sft", True)]
    command = accelerate_command(stage.load_section("sft", tmp_path / "params.yaml").project.launcher,
                                 "stages.train_sft", ["--params", "p.yaml"], module=True)
    assert command[-4:] == ["--module", "stages.train_sft", "--params", "p.yaml"]


def test_a_dry_run_whose_reader_stopped_ends_quietly() -> None:
    """`python -m stages.eval --dry-run | head`: the reader has closed the pipe (here before the stage
    writes, so the write surely fails); no traceback, exit 0."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "stages.eval", "--dry-run"], cwd=ROOT, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
