"""Shared test setup: offline, a private schema cache, and helpers to write params files."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("LLMHALLUC_CACHE_DIR", str(ROOT / ".pytest_cache" / "llmhalluc-schema"))
# Eval evaluates every model afresh in tests unless one turns its cache on (tests/test_eval_stage.py does).
os.environ.setdefault("LLMHALLUC_EVAL_CACHE", "0")


@pytest.fixture(autouse=True, scope="session")
def _provided_to_params() -> None:
    """What every stage script imports before it reads params.yaml: the owners of the facts the params
    checks ask for (llmhalluc.params.provided), so a test that loads a section in this process gets every
    check. tests/test_params_leaf.py proves each stage script imports them itself."""
    from llmhalluc import rewards, stage  # noqa: F401
    from llmhalluc.datasets import registry  # noqa: F401


def dvc_yaml(root: Path = ROOT) -> dict:
    """dvc.yaml's stages and plots as DVC runs them: `${section.key}` resolved from root's params.yaml."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo
    from ruamel.yaml import YAML

    with Repo(str(root)) as repo:
        resolver = DataResolver(repo, str(root), YAML(typ="safe").load((root / "dvc.yaml").read_text()))
        return {"stages": resolver.resolve()["stages"], "plots": resolver.resolve_plots()}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """An untrained tiny model with the backtrack token, and its tokenizer: real transformers generation in
    well under a second, for tests that compare decoding paths."""
    from llmhalluc.backtrack.token import add_backtrack_token
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.tiny_model import build_tiny_model

    corpus = [f"Start with {a}. Add {b}. {a} + {b} = {a + b}. The answer is {a + b}." for a in range(10)
              for b in range(10)]
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus, hidden_size=32, intermediate_size=64)
    model, tokenizer = load_model_and_tokenizer(str(folder), dtype="float32")
    add_backtrack_token(model, tokenizer)
    model.eval()
    return model, tokenizer


@pytest.fixture
def params_text() -> str:
    """The repo's own params.yaml, which every test edit starts from."""
    return (ROOT / "params.yaml").read_text()


@pytest.fixture
def grpo_recorder(monkeypatch) -> dict[str, list]:
    """TRL's GRPOTrainer, recorded: every trainer built ("trainers") and every scored generation batch ("batches").

    For tests that run the train_grpo stage in this process and read what the trainer really got.
    """
    import trl

    seen: dict[str, list] = {"trainers": [], "batches": []}

    class Recording(trl.GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["trainers"].append(self)

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            seen["batches"].append(out)
            return out

    monkeypatch.setattr(trl, "GRPOTrainer", Recording)
    return seen


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"test setup: {old!r} not in params.yaml"
    return text.replace(old, new, 1)


def set_params(text: str, values: dict[str, Any]) -> str:
    """params text with each dotted key set to a Python value, every other line as it was.

    For values whose text a plain edit() cannot count on: a list may be written flow or block style
    and a long string folded (the layout `dvc exp run -S` writes back), so tests set those by key.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes, yaml.width = True, 4096
    data = yaml.load(text)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        assert last in node, f"test setup: no key {key} in params.yaml"
        node[last] = value
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def run_stage_script(stage: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ}, timeout=600,
    )


def load_script(relative: str) -> ModuleType:
    """A script of the repo (benchmarks/run.py, ...) as a module, without running its main: benchmarks/ is
    not a package, and its tests call the scripts' own functions (parse_args, markdown, ...)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
