"""llmhalluc/params is a leaf of the library: it imports no other llmhalluc module, and every stage still gets
every check, because the owners of what the checks ask for provide it (llmhalluc/params/provided.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, edit

PARAMS = ROOT / "llmhalluc" / "params"


def imports_above_params(source: str, module: str) -> list[str]:
    """`line: module` for each import in a module's source (top level, in a function, under TYPE_CHECKING) of
    an llmhalluc module outside llmhalluc.params; a relative import counts by the module it names."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            named = ".".join(part for part in (base, node.module or "") if part)
            # `from llmhalluc import answers` names the module llmhalluc.answers
            names = [f"{named}.{alias.name}" for alias in node.names] if named == "llmhalluc" else [named]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0] == "llmhalluc"
                  and name.split(".")[:2] != ["llmhalluc", "params"]]
    return found


def test_the_walker_sees_every_form_of_import() -> None:
    source = ("import llmhalluc.hardware\nfrom llmhalluc import answers\nfrom llmhalluc.params import schema\n"
              "def f():\n    from llmhalluc.launcher import read_accelerate_config\n"
              "    from .. import rewards\n    from ..datasets.registry import load_registry\n"
              "    from . import sections\n    import llmhalluc\n")
    assert imports_above_params(source, "llmhalluc.params.checks") == [
        "1: llmhalluc.hardware", "2: llmhalluc.answers", "5: llmhalluc.launcher", "6: llmhalluc.rewards",
        "7: llmhalluc.datasets.registry", "9: llmhalluc"]


def test_params_imports_no_llmhalluc_module_outside_params() -> None:
    found = []
    for path in sorted(PARAMS.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found += [f"{path.relative_to(ROOT)}:{line}" for line in imports_above_params(path.read_text(), module)]
    assert not found, "llmhalluc/params must be a leaf; it imports:\n" + "\n".join(found)


# Each stage script, in a fresh process (no test's imports), with a params.yaml edit that makes its
# checks ask for what the owners provide: all of it must be there, so no check is skipped or crashes.
ASKING = {
    "prepare": [],  # the answer-rule checks and the dataset registry are asked on every load
    "train_sft": [("  max_steps: 600 ", "  max_steps: 600\n  bf16: true ")],  # the Machine
    "train_grpo": [("  max_steps: 40 ", "  max_steps: 40\n  bf16: true ")],  # reward_names (always), the Machine
    "merge": [],
    "eval": [("  backend: transformers ", "  backend: vllm ")],  # the Machine's vllm_problem
}


@pytest.mark.parametrize("stage", ASKING)
def test_each_stage_script_provides_what_its_checks_ask(tmp_path: Path, params_text: str, stage: str) -> None:
    for old, new in ASKING[stage]:
        params_text = edit(params_text, old, new)
    (tmp_path / "params.yaml").write_text(params_text)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr and result.returncode in (0, 2), result.stderr
    if ASKING[stage]:  # this machine may honour the edit (a GPU); without it the check must refuse it
        assert result.returncode == 0 or "needs" in result.stderr, result.stderr


def test_a_fact_nobody_provided_is_a_bug_not_a_silent_pass(tmp_path: Path, params_text: str) -> None:
    """Loading grpo with only llmhalluc.params imported: the reward-name check cannot run, and says so."""
    (tmp_path / "params.yaml").write_text(params_text)
    code = ("from llmhalluc.params import load_section\n"
            f"load_section('grpo', {str(tmp_path / 'params.yaml')!r}, for_run=False)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "RuntimeError: llmhalluc.params asked for 'reward_names', which no imported module provided" \
        in result.stderr
