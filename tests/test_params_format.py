"""params.yaml is written the way `dvc exp run -S` writes it back, so an experiment changes only its keys' lines.

DVC applies `-S key=value` with dvc.utils.hydra.apply_overrides: it reads params.yaml with ruamel's round
trip (comments kept), applies the override through OmegaConf, then puts every value back as a plain Python
object and dumps the file. So a flow list `[a, b]` comes back as a block list, `null` as an empty value, a
quoted string unquoted where YAML allows, and a string longer than the line folded onto the next one. A
file already in that layout comes back byte for byte, except the key that was set.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: Rewrites params.yaml in DVC's layout: DVC's own writer with no override (values and comments kept).
REFORMAT = "python -c \"from dvc.utils.hydra import apply_overrides; apply_overrides('params.yaml', [])\""


def dvc_set(tmp_path: Path, *overrides: str) -> list[str]:
    """The changed lines (diff -U0, without headers) when DVC applies `-S` overrides to a copy of params.yaml."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    apply_overrides(copy, list(overrides))
    before, after = (ROOT / "params.yaml").read_text().splitlines(), copy.read_text().splitlines()
    return [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def test_dvc_writes_params_yaml_back_unchanged(tmp_path: Path):
    changed = dvc_set(tmp_path)
    assert not changed, ("dvc exp run -S would rewrite these lines of params.yaml; put them in DVC's layout "
                         f"(block lists, empty for null; {REFORMAT} does it):\n" + "\n".join(changed))


@pytest.mark.parametrize("override", ["prepare.seed=1", "sft.learning_rate=3e-4", "sft.gguf_file=model.gguf",
                                      "grpo.beta=0.1", "merge.dtype=bfloat16", "eval.sampled.n=8"])
def test_setting_one_key_changes_its_line_alone(tmp_path: Path, override: str):
    key = override.partition("=")[0]
    changed = dvc_set(tmp_path, override)
    assert len(changed) == 2, "\n".join(changed)
    removed, added = changed
    name = key.rpartition(".")[2]
    assert removed.startswith("-") and added.startswith("+")
    assert removed.split(":")[0] == "-" + added.split(":")[0][1:] and added.strip("+ ").startswith(f"{name}:")
    assert removed.split("#", 1)[1] == added.split("#", 1)[1] and removed.index("#") == added.index("#")  # the comment
