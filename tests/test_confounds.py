"""What a comparison between configs must not silently change: the starting model, and how much gets generated.

The retry-data question (error_rate 0 vs 0.3) is only answered if both arms start from
the same model: the built-in tokenizer and initial weights may depend on the seeds and
the clean data, never on the augmentation. And a generation limit shorter than what SFT
taught cuts late backtracks off, which would read as the model's failure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmhalluc import lineage
from tests.tiny_project import run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sft(folder: Path, edits: dict) -> Path:
    folder.mkdir()
    run("prepare", "prepare", folder, edits)
    run("train_sft", "sft", folder, edits)
    return folder / "models" / "sft"


def test_augmentation_does_not_change_the_starting_model(tmp_path: Path):
    clean = _sft(tmp_path / "clean", {"prepare.backtrack.error_rate": 0.0})
    retry = _sft(tmp_path / "retry", {"prepare.backtrack.error_rate": 0.5, "prepare.backtrack.error_kind": "random"})
    assert (tmp_path / "retry/data/prepared/sft.jsonl").read_text() != (tmp_path / "clean/data/prepared/sft.jsonl")\
        .read_text()  # the arms really differ in their data
    for name in ("tokenizer.json", "model.safetensors"):  # the built-in base saved inside models/sft
        assert _digest(clean / "base" / name) == _digest(retry / "base" / name), name

    record = json.loads((retry / "lineage.json").read_text())
    assert record["versions"]["torch"] and record["versions"]["trl"] and record["versions"]["transformers"]
    assert record["versions"]["peft"] and record["versions"]["python"]
    clean_lengths = json.loads((clean / "lineage.json").read_text())["lengths"]
    # errors and their backtracks make the longest trained completion longer
    assert record["lengths"]["max_completion_tokens"] > clean_lengths["max_completion_tokens"] > 0
    assert record["lengths"]["truncated_examples"] == 0  # TINY's sft.max_length 128 holds every example


def test_length_record_counts_completion_and_truncation():
    examples = [{"input_ids": [1] * 7 + [9] * 3, "labels": [-100] * 4 + [1] * 6},
                {"input_ids": [1] * 29 + [9], "labels": [-100] * 10 + [1] * 20}]
    # the prompt length is what counts, not the labels: masked error tokens are still generated
    record = lineage.length_record(examples, [4, 5], max_length=20, backtrack_id=9)
    assert record == {"max_completion_tokens": 25, "max_example_tokens": 30, "truncated_examples": 1,
                      "max_backtracks": 3}


def test_generation_limit_shorter_than_sft_completions_warns_naming_the_key():
    said: list[str] = []
    upstream = {"lengths": {"max_completion_tokens": 60}}
    assert lineage.warn_if_cut(upstream, 48, "grpo.max_completion_length", said.append)
    assert "grpo.max_completion_length 48" in said[0] and "at least 60" in said[0]
    assert not lineage.warn_if_cut(upstream, 60, "eval.max_new_tokens", said.append)
    assert not lineage.warn_if_cut(None, 8, "eval.max_new_tokens", said.append)  # a hub model: nothing to compare
    assert len(said) == 1
    merged = {"stage": "merge", "parent": {"lineage": {"stage": "train_grpo", "parent": {"lineage": upstream}}}}
    assert lineage.warn_if_cut(merged, 50, "eval.max_new_tokens", said.append)  # SFT's lengths, up the chain
    assert "eval.max_new_tokens 50" in said[1]
