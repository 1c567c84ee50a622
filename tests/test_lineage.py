"""lineage.json: what identifies a base, a run's data and code, and how a chain of stages is read back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmhalluc.errors import DataError
from llmhalluc.lineage import (
    base_record,
    chain,
    data_record,
    hub_revision,
    library_versions,
    read_lineage,
    write_lineage,
)


def test_hub_revision_is_the_cached_snapshot_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub_revision("org/tiny", cache_dir=tmp_path) == commit
    assert hub_revision("org/other", cache_dir=tmp_path) is None
    assert hub_revision(str(tmp_path)) is None  # a local folder has no revision
    assert base_record("builtin:tiny-qwen2", saved_as="base") == {
        "name_or_path": "builtin:tiny-qwen2", "path": "base", "revision": None}


def test_round_trip_chain_and_bad_files(tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text('{"id": 1}\n')
    sft = {"stage": "train_sft", "kind": "lora", "backtrack_token": "<|backtrack|>", "parent": None,
           "data": data_record(data)}
    grpo = {"stage": "train_grpo", "kind": "full", "backtrack_token": "<|backtrack|>",
            "parent": {"path": "models/sft", "lineage": sft}}
    write_lineage(tmp_path, grpo)
    assert read_lineage(tmp_path) == {**grpo, "versions": library_versions()}  # the writer adds what ran it
    assert [n["stage"] for n in chain(grpo)] == ["train_sft", "train_grpo"]
    assert sft["data"]["sha256"] == hashlib.sha256(b'{"id": 1}\n').hexdigest()
    assert read_lineage(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="backtrack_token"):
        write_lineage(tmp_path, {"kind": "full"})
    (tmp_path / "lineage.json").write_text(json.dumps({"kind": "merged"}))
    with pytest.raises(DataError, match=r"lineage\.json: 'kind' must be one of full, lora"):
        read_lineage(tmp_path)
