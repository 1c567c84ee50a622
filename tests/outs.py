"""Helpers for the fault and bad-input suites: earlier outs on disk, and proof they were left alone."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import runpy
import sys
from pathlib import Path

from tests.conftest import ROOT, dvc_yaml


@functools.cache
def stage_outs() -> dict[str, list[str]]:
    """Where every stage writes: its outs, metrics and plots as dvc.yaml declares them (`${...}` resolved from
    params.yaml, so a moved out moves here too), and the checkpoint folders the training stages keep
    beside them (persisted, outside DVC's outs)."""
    from ruamel.yaml import YAML

    params = YAML(typ="safe").load((ROOT / "params.yaml").read_text())
    outs = {name: [o if isinstance(o, str) else next(iter(o)) for key in ("outs", "metrics", "plots")
                   for o in stage.get(key) or []]
            for name, stage in dvc_yaml()["stages"].items()}
    outs["train_sft"].append(params["sft"]["output_dir"])
    outs["train_grpo"].append(params["grpo"]["output_dir"])
    return outs


def plant_earlier_outs(root: Path) -> None:
    """Marker files where every stage writes, standing in for the outs of an earlier run."""
    for stage, outs in stage_outs().items():
        for out in outs:
            path = root / out
            if path.suffix == ".json":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f'{{"earlier": "{stage}"}}\n')
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "earlier.bin").write_bytes(f"earlier {out}\n".encode() + bytes(range(256)))


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under root, by relative path: the whole visible state."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def stray_staging(root: Path) -> list[str]:
    """Leftovers of llmhalluc.outputs.staged_output: `.name.XXXX.tmp` staging folders and `.name.old` swaps."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


def run_in_process(stage: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run stages/<stage>.py as __main__ inside this process; (exit code, stdout, stderr).

    A params error is raised before anything heavy is imported, so running the
    real script in-process checks the same code path as a subprocess at a
    hundredth of the cost; the catalogue runs dozens of cases.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    old_cwd, old_argv = Path.cwd(), sys.argv
    script = str(ROOT / "stages" / f"{stage}.py")
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [script, *args]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return code, stdout.getvalue(), stderr.getvalue()


#: A problem line as the params layer writes it: `file:line: key.path: what is wrong`.
PROBLEM = re.compile(r"^(?:error: |warning: )?(?P<file>[^\s:]+):(?P<line>\d+): (?P<key>[A-Za-z_][\w.\[\]-]*): ")


def named_keys(stderr: str) -> list[tuple[str, int, str]]:
    """(file, line, key.path) of every problem line in a stage's stderr."""
    return [(m["file"], int(m["line"]), m["key"]) for line in stderr.splitlines() if (m := PROBLEM.match(line))]


def assert_names_written_keys(stderr: str, params_file: Path) -> None:
    """Every problem line names a key path the user wrote, on the line the file has it.

    A file that does not parse has no key table: its one problem line is held to the case's own fragment
    and anchor instead (the key path there is read off the text by indentation, llmhalluc.params.yaml12).
    """
    from llmhalluc.errors import ParamsError
    from llmhalluc.params.yaml12 import read_params_file

    named = named_keys(stderr)
    assert named, f"no problem line names `file:line: key.path`:\n{stderr}"
    try:
        file = read_params_file(params_file)
    except ParamsError:
        return
    written = {"".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)[1:]: line
               for path, line in file.lines.items()}
    for name, line, key in named:
        if name == params_file.name:
            assert written.get(key) == line, f"{name}:{line}: {key} is not a key the file writes there:\n{stderr}"
