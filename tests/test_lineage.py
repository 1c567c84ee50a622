"""lineage.json: what identifies a base, a run's data and code, and how a chain of stages is read back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmhalluc.errors import DataError
from llmhalluc.lineage import (
    Lineage,
    base_record,
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
    assert [n["stage"] for n in Lineage(grpo).chain()] == ["train_sft", "train_grpo"]
    assert sft["data"]["sha256"] == hashlib.sha256(b'{"id": 1}\n').hexdigest()
    assert read_lineage(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="backtrack_token"):
        write_lineage(tmp_path, {"kind": "full"})
    (tmp_path / "lineage.json").write_text(json.dumps({"kind": "merged"}))
    with pytest.raises(DataError, match=r"lineage\.json: 'kind' must be one of full, lora"):
        read_lineage(tmp_path)


#: A merged model's lineage.json as an older pipeline wrote it: the commit inside the record, no retraction
#: unit (it predates the unit: token), SFT's lengths and mistakes two parents up.
OLDER_MERGED = {
    "stage": "merge", "kind": "full", "backtrack_token": "<|backtrack|>", "backtrack_id": 512, "vocab_rows": 513,
    "base": {"name_or_path": "builtin:tiny-qwen2", "path": "../sft/base", "revision": None},
    "data": {"path": "data/prepared/grpo.jsonl", "sha256": "g" * 64},
    "git_commit": "0" * 40, "git_dirty": True, "params": {"dtype": "float32"},
    "parent": {"path": "models/grpo", "lineage": {
        "stage": "train_grpo", "kind": "lora", "backtrack_token": "<|backtrack|>", "backtrack_id": 512,
        "base": {"name_or_path": "builtin:tiny-qwen2", "path": "../sft/base", "revision": None},
        "git_commit": "0" * 40, "git_dirty": False, "rollout_backtrack_bias": 0.0,
        "parent": {"path": "models/sft", "lineage": {
            "stage": "train_sft", "kind": "full", "backtrack_token": "<|backtrack|>", "backtrack_id": 512,
            "base": {"name_or_path": "builtin:tiny-qwen2", "path": "base", "revision": None},
            "lengths": {"max_completion_tokens": 41, "max_backtracks": 3}, "mistakes": {"kind": "lookup"},
            "parent": None}}}},
}


def test_an_older_folder_loads_and_answers_from_up_its_chain(tmp_path: Path) -> None:
    from llmhalluc.backtrack.retraction import unit_of
    from llmhalluc.diagnostics import trained_kind

    folder = tmp_path / "models" / "merged"
    folder.mkdir(parents=True)
    (folder / "lineage.json").write_text(json.dumps(OLDER_MERGED))
    merged = Lineage.read(folder)
    assert merged and merged.kind == "full" and merged.backtrack_token == "<|backtrack|>" and merged.vocab_rows == 513
    assert [n["stage"] for n in merged.chain()] == ["train_sft", "train_grpo", "merge"]
    assert merged.parent.folder == "models/grpo" and merged.parent.parent.parent is None
    assert merged.lengths == {"max_completion_tokens": 41, "max_backtracks": 3}  # SFT's, two parents up
    assert merged.nearest("mistakes", "kind") == trained_kind(merged) == trained_kind(OLDER_MERGED) == "lookup"
    assert unit_of(merged) == unit_of(OLDER_MERGED) == "token"  # a record without the unit: per token
    assert merged.base_location() == (str(folder / "../sft/base"), None)
    said: list[str] = []
    assert merged.warn_if_cut(40, "eval.max_new_tokens", said.append) and "at least 41" in said[0]
    assert not merged.warn_if_cut(41, "eval.max_new_tokens", said.append)


def test_a_folder_without_lineage_reads_empty(tmp_path: Path) -> None:
    for where in (tmp_path, tmp_path / "missing", "org/model"):
        empty = Lineage.read(where)
        assert not empty and empty.kind is None and empty.lengths is None and empty.parent is None
        assert empty.chain() == [] and empty.nearest("retraction", "unit") is None
    assert not Lineage.of(None) and Lineage.of({"kind": "full"}).kind == "full"
    with pytest.raises(DataError, match="no base recorded"):
        Lineage({"kind": "full"}, tmp_path).base_location()


def test_records_are_built_once_and_a_child_re_points_the_base(tmp_path: Path) -> None:
    """train_sft's root record; train_grpo's and merge's child records: the parent, and the base copy inside
    models/sft seen from the child's folder (or the start folder itself, for a start without lineage)."""
    base = base_record("builtin:tiny-qwen2", saved_as="base")
    facts = {"data": None, "token": "<|backtrack|>", "token_id": 512, "unit": "step", "vocab_rows": 513}
    sft = Lineage.root(base, **facts, lengths={"max_backtracks": 1})
    assert sft == {"backtrack_token": "<|backtrack|>", "backtrack_id": 512, "retraction": {"unit": "step"},
                   "vocab_rows": 513, "base": base, "parent": None, "data": None, "lengths": {"max_backtracks": 1}}
    (tmp_path / "sft").mkdir()
    write_lineage(tmp_path / "sft", {"stage": "train_sft", "kind": "full", **sft})
    upstream = Lineage.read(str(tmp_path / "sft"))
    grpo = upstream.child(tmp_path / "runs" / "grpo", **facts, rollout_backtrack_bias=0.5)
    assert grpo["base"] == {**base, "path": "../../sft/base"} and grpo["rollout_backtrack_bias"] == 0.5
    assert grpo["parent"] == {"path": str(tmp_path / "sft"), "lineage": upstream.record}
    assert Lineage(grpo).lengths == {"max_backtracks": 1}
    hub = Lineage.read("org/model").child("models/grpo", **facts)
    assert hub["base"] == {"name_or_path": "org/model", "path": None, "revision": None}
    assert hub["parent"] == {"path": "org/model", "lineage": None}


def test_dirty_means_code_or_params_not_what_the_pipeline_writes(tmp_path: Path, monkeypatch) -> None:
    """After `dvc repro` in a clean clone the lock, metrics, curves, plots and DVC's .gitignore entries have
    changed: the run is still clean. An edit to code or params.yaml is not."""
    import subprocess

    from llmhalluc.lineage import git_state, run_path, write_run

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    written = ["dvc.lock", "metrics/eval.json", "dvclive/train_sft/metrics.json", "plots/eval/models.csv",
               "models/.gitignore", ".gitignore"]
    for name in [*written, "params.yaml", "stages/train_sft.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("before\n")
    for command in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-q", "-m", "clone"]):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    for name in written:
        (tmp_path / name).write_text("after a run\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    assert git_state(tmp_path / "stages") == {"git_commit": head, "git_dirty": False}  # from anywhere in it
    for name in ("params.yaml", "stages/train_sft.py"):
        (tmp_path / name).write_text("edited\n")
        assert git_state(tmp_path)["git_dirty"] is True, name
        subprocess.run(["git", "checkout", "--", name], cwd=tmp_path, check=True)

    # The run record sits beside the model folder; Lineage.run reads it (an older folder: from its lineage.json).
    folder = tmp_path / "models" / "sft"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # stages run at the repository root
    assert write_run("models/sft", "train_sft") == run_path("models/sft") == Path("models/sft.run.json")
    assert Lineage.read(folder).run == {"stage": "train_sft", "git_commit": head, "git_dirty": False}
    assert Lineage(OLDER_MERGED, tmp_path / "nowhere").run == {"git_commit": "0" * 40, "git_dirty": True}
