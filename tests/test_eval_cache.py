"""The eval cache's key and store: what makes two evals of a model the same (tests/test_eval_stage.py runs the
stage with it: an unchanged model is reused, the outs byte-identical)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmhalluc import eval_cache

PARTS = {"settings": {"max_new_tokens": 64, "probe": {"enabled": True}}, "data": {"eval.jsonl": "ab"}, "code": "c0"}


def _folder(path: Path, weights: bytes, lineage: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    if lineage is not None:
        (path / "lineage.json").write_text(json.dumps(lineage))
    return path


def test_the_key_changes_with_each_thing_that_determines_a_block(tmp_path: Path):
    model = eval_cache.model_identity(_folder(tmp_path / "m", b"weights"))
    same = eval_cache.key(model, **PARTS)
    assert same == eval_cache.key(eval_cache.model_identity(tmp_path / "m"), **PARTS)
    others = [eval_cache.key(model, **{**PARTS, "settings": {**PARTS["settings"], "max_new_tokens": 32}}),
              eval_cache.key(model, **{**PARTS, "data": {"eval.jsonl": "cd"}}),
              eval_cache.key(model, **{**PARTS, "code": "c1"}),
              eval_cache.key(eval_cache.model_identity(_folder(tmp_path / "n", b"other weights")), **PARTS)]
    assert len({same, *others}) == 5


def test_a_model_is_known_by_its_files_and_an_adapter_also_by_what_it_applies_to(tmp_path: Path):
    assert eval_cache.model_identity("Qwen/Qwen2.5-0.5B-Instruct") is None  # a hub id: nothing pins it
    assert eval_cache.key(None, **PARTS) is None
    parent = _folder(tmp_path / "sft", b"sft weights")
    adapter = _folder(tmp_path / "grpo", b"adapter", {"kind": "lora", "parent": {"path": str(parent)}})
    before = eval_cache.model_identity(adapter)
    assert before["applied_to"] == eval_cache.model_identity(parent)
    (parent / "model.safetensors").write_bytes(b"retrained sft weights")  # the adapter's files are unchanged
    assert eval_cache.model_identity(adapter) != before
    on_hub = _folder(tmp_path / "hub", b"adapter", {"kind": "lora", "base": {"name_or_path": "org/base"}})
    assert eval_cache.model_identity(on_hub) is None  # an unpinned hub base
    pinned = _folder(tmp_path / "pinned", b"adapter", {"kind": "lora", "base": {"name_or_path": "org/base",
                                                                                 "revision": "abc123"}})
    assert eval_cache.model_identity(pinned)["applied_to"] == {"hub": "org/base", "revision": "abc123"}


def test_store_then_load_and_the_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMHALLUC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(eval_cache.SWITCH_ENV, "1")
    block = {"rows": [{"id": "q0", "correct": True, "p": 1e-06}], "metrics": {"accuracy": None}}
    assert eval_cache.store("k", block) == tmp_path / "eval" / "k.json"
    assert eval_cache.load("k") == block
    assert eval_cache.load("missing") is None and eval_cache.load(None) is None
    (tmp_path / "eval" / "half.json").write_text('{"rows": [')  # a file cut short is a miss, not an error
    assert eval_cache.load("half") is None
    monkeypatch.setenv(eval_cache.SWITCH_ENV, "off")
    assert eval_cache.load("k") is None and eval_cache.store("k2", block) is None
