"""The retraction unit (sft.backtrack.unit): resolve(render(x)) == clean for each unit, on the tiny byte-level BPE
and on SmolLM2's real tokenizer; eval and the rewards resolve identically; the unit travels in lineage.

Steps are written as train_sft encodes them ("" before the first step, " " before the others), with decimals
("7.5") whose "." must not read as a step end, errors at the first, a middle and the last step, and two errors.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmhalluc import evaluation, lineage
from llmhalluc.backtrack.encoding import encode_example
from llmhalluc.backtrack.retraction import UNITS, Retraction, render_error, retraction_for, unit_of
from llmhalluc.datasets import arithmetic
from llmhalluc.datasets.augment import add_errors
from llmhalluc.datasets.converters import CONVERTERS, Context
from llmhalluc.datasets.mistakes import KINDS
from llmhalluc.datasets.step_check import has_check, with_check
from llmhalluc.diagnostics import probe_item
from llmhalluc.errors import DataError
from llmhalluc.params.sections import ArithmeticParams, BacktrackAugmentParams, BacktrackRewardOptions, RewardsParams
from llmhalluc.rewards import backtrack_runs, build_rewards, resolved_texts
from tests.conftest import ROOT, edit, run_stage_script

TOKEN = "<|backtrack|>"
STEPS = ["He buys 2.5 kg at $3.20 each.", "2.5 * 3.20 = 8.",  "Then 8 + 7.5 = 15.5."]
ANSWER = "The answer is 15.5."
#: (step index, wrong text): first, middle, last (the answer sentence), and two errors in one example.
ERROR_SETS = [[(0, "He buys 2.4 kg at $3.20 each.")], [(1, "2.5 * 3.20 = 8.5.")], [(3, "The answer is 16.5.")],
              [(1, "2.5 * 3.2 = 7.5."), (2, "Then 8 + 7.5 = 14.5.")], [(2, "Then 8 + 7.5 = 15.4."),
                                                                        (2, "Then 8 + 7.5 = 15.6.")]]


def _arithmetic_records(n: int = 30) -> list:
    stream = arithmetic.generate(ArithmeticParams(max_steps=4, max_operand=50), random.Random(3))
    ctx = Context(entry="arithmetic", columns={}, prompt="{question}", abstain_answer="unanswerable")
    return [CONVERTERS["arithmetic"](next(stream), i, ctx) for i in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    from transformers import AutoTokenizer

    from llmhalluc.tiny_model import build_tiny_model

    corpus = [text for r in _arithmetic_records() for text in (r.question, r.solution())] + [*STEPS, ANSWER]
    folder = tmp_path_factory.mktemp("tok") / "bpe"
    build_tiny_model(folder, corpus, vocab_size=400, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=32, seed=0)
    tiny = AutoTokenizer.from_pretrained(folder)
    real = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "smollm2_tokenizer")
    for tokenizer in (tiny, real):
        tokenizer.add_special_tokens({"additional_special_tokens": [TOKEN]})
    return {"tiny byte-level BPE": tiny, "SmolLM2": real}


def _render(tokenizer, unit: str, steps, answer, errors) -> tuple[list[int], list[int], Retraction]:
    """(augmented completion, clean completion, the unit's Retraction), prompt stripped."""
    bt = tokenizer.convert_tokens_to_ids(TOKEN)
    retraction = retraction_for(tokenizer, bt, unit=unit)
    prompt = [5, 6, 7]

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def render(errs):
        return encode_example(prompt, steps, answer, errs, tokenize, bt, [], mask_errors=True,
                              retraction=retraction)["input_ids"][len(prompt):]

    return render(errors), render([]), retraction


@pytest.mark.parametrize("errors", ERROR_SETS, ids=["first", "middle", "last", "two", "two-same-step"])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("name", ["tiny byte-level BPE", "SmolLM2"])
def test_resolve_render_is_clean_with_decimal_steps(tokenizers, name: str, unit: str, errors):
    tokenizer = tokenizers[name]
    augmented, clean, retraction = _render(tokenizer, unit, STEPS, ANSWER, errors)
    bt = retraction.backtrack_id
    assert retraction.resolve(augmented) == clean
    assert tokenizer.decode(clean) == " ".join([*STEPS, ANSWER])
    wrong = [tokenizer.encode((" " if step else "") + text, add_special_tokens=False) for step, text in errors]
    # token: one backtrack per error token; step / retry: one per error step, the wrong step kept before it.
    assert augmented.count(bt) == (sum(map(len, wrong)) if unit == "token" else len(errors))


def _gsm8k_records() -> list:
    import json

    ctx = Context(entry="gsm8k", columns={}, prompt="{question}", abstain_answer="unanswerable")
    lines = (ROOT / "tests" / "fixtures" / "gsm8k_sample.jsonl").read_text().splitlines()
    return [CONVERTERS["gsm8k"](json.loads(line), i, ctx) for i, line in enumerate(lines)]


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "check_steps"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("source", ["arithmetic", "gsm8k"])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("name", ["tiny byte-level BPE", "SmolLM2"])
def test_resolve_render_is_clean_on_prepared_records(tokenizers, name: str, unit: str, source: str, kind: str,
                                                     checked: bool):
    """Every kind of wrong step, with and without the step's check, round-trips through encode and resolve."""
    records = _arithmetic_records() if source == "arithmetic" else _gsm8k_records()
    if checked:
        for record in records:
            record.steps = [with_check(step) for step in record.steps]
    add_errors(records, BacktrackAugmentParams(error_rate=1.0, errors_per_example=2, error_kind=kind),
               random.Random(0))
    tokenizer = tokenizers[name]
    for record in records:
        augmented, clean, retraction = _render(tokenizer, unit, record.steps, record.answer_sentence(),
                                               [(e.step, e.text) for e in record.errors])
        assert retraction.resolve(augmented) == clean, record.id
        wrong = [tokenizer.encode((" " if e.step else "") + e.text, add_special_tokens=False) for e in record.errors]
        assert augmented.count(retraction.backtrack_id) == (sum(map(len, wrong)) if unit == "token" else 2)
    if checked and source == "arithmetic":
        assert all(has_check(e.text) for r in records for e in r.errors if e.step < len(r.steps)) or kind == "random"


@pytest.mark.parametrize("name", ["tiny byte-level BPE", "SmolLM2"])
def test_a_step_backtrack_stops_at_the_step_boundary_not_inside_a_decimal(tokenizers, name: str):
    tokenizer = tokenizers[name]
    bt = tokenizer.convert_tokens_to_ids(TOKEN)
    step = retraction_for(tokenizer, bt, unit="step")
    ids = tokenizer.encode("Then 8 + 7.5 = 15.5. Next 3.5 + 1", add_special_tokens=False)
    # Mid-step: the partial step goes, back to the last step end ("7.5" and "3.5" are no boundary).
    assert tokenizer.decode(step.resolve([*ids, bt])) == "Then 8 + 7.5 = 15.5."
    assert step.resolve([*ids, bt, bt]) == []  # the second one takes the first step: the start is a boundary
    assert step.resolve([bt]) == [] and step.resolve([]) == []  # nothing to retract is a no-op
    lines = tokenizer.encode("8 + 7 = 15\nWrong 1 = 2", add_special_tokens=False)
    assert tokenizer.decode(step.resolve([*lines, bt])).rstrip("\n") == "8 + 7 = 15"  # a newline ends a step


def test_a_step_the_unit_cannot_see_the_end_of_fails_at_encoding(tokenizers):
    tokenizer = tokenizers["SmolLM2"]
    with pytest.raises(ValueError, match="does not retract exactly the error step"):
        _render(tokenizer, "step", ["2 + 3 = 5", "5 + 1 = 6."], ANSWER, [(1, "5 + 1 = 7.")])
    augmented, clean, retraction = _render(tokenizer, "token", ["2 + 3 = 5", "5 + 1 = 6."], ANSWER,
                                           [(1, "5 + 1 = 7.")])
    assert retraction.resolve(augmented) == clean  # the token unit needs no boundary


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("name", ["tiny byte-level BPE", "SmolLM2"])
def test_eval_and_rewards_resolve_identically(tokenizers, name: str, unit: str):
    tokenizer = tokenizers[name]
    bt = tokenizer.convert_tokens_to_ids(TOKEN)
    options = RewardsParams(backtrack=BacktrackRewardOptions(max_backtracks=16))
    accuracy, backtrack = build_rewards(["accuracy", "backtrack"], tokenizer, bt, options, unit=unit)
    pattern = r"(?i:the answer is)\s*\$?(-?[\d,]*\.?\d+)"
    completions = [_render(tokenizer, unit, STEPS, ANSWER, errors)[0] for errors in ERROR_SETS]
    retraction = retraction_for(tokenizer, bt, unit=unit)
    raw_mid_step = [*tokenizer.encode("He buys 2.5 kg. 2.5 * 3 = 9", add_special_tokens=False), bt]
    completions.append(raw_mid_step)
    rows = [evaluation.score(ids, gold="15.5", answerable=True, tokenizer=tokenizer, backtrack_id=bt,
                             pattern=pattern, abstain="unanswerable", retraction=retraction) for ids in completions]
    texts = resolved_texts(tokenizer, retraction, completions)
    assert [row["resolved"] for row in rows] == texts
    assert [backtrack_runs(ids, retraction)[1] for ids in completions] == [retraction.resolve(c) for c in completions]
    assert [row["backtracks"] for row in rows] == [ids.count(bt) for ids in completions]  # raw token counts
    scores = accuracy(prompts=[""] * len(completions), completions=[""] * len(completions),
                      completion_ids=completions, answer=["15.5"] * len(completions))
    assert scores == [float(row["correct"]) for row in rows] == [1.0] * len(ERROR_SETS) + [0.0]
    shaped = backtrack(prompts=[""] * len(completions), completions=[""] * len(completions),
                       completion_ids=completions, answer=["15.5"] * len(completions))
    # Each retracted wrong step then rewritten right is a fix; per token, two wrong steps need more
    # backtracks than grpo.rewards.backtrack.max_backtracks allows (16), one backtrack a step does not.
    fixed = 3 if unit == "token" else len(ERROR_SETS)
    assert shaped[:fixed] == [1.0] * fixed


def test_the_unit_travels_in_lineage(tmp_path: Path):
    sft = {"stage": "train_sft", "kind": "full", "backtrack_token": TOKEN, "retraction": {"unit": "step"},
           "parent": None}
    lineage.write_lineage(tmp_path, sft)
    recorded = lineage.read_lineage(tmp_path)
    assert unit_of(recorded) == "step"
    grpo = {"stage": "train_grpo", "kind": "lora", "backtrack_token": TOKEN,
            "parent": {"path": str(tmp_path), "lineage": recorded}}
    assert unit_of(grpo) == "step"  # a child that did not copy it still resolves by its ancestor's
    merged = {"stage": "merge", "kind": "full", "backtrack_token": TOKEN, "retraction": {"unit": "retry"},
              "parent": {"path": "models/grpo", "lineage": grpo}}
    assert unit_of(merged) == "retry"  # the nearest record wins
    assert unit_of(None) == "token"  # a hub model: no record, per token
    assert unit_of({"stage": "train_sft", "kind": "full", "backtrack_token": TOKEN}) == "token"  # older lineage
    with pytest.raises(DataError, match="'sentence' is not one of token, step, retry"):
        unit_of({**sft, "retraction": {"unit": "sentence"}})


@pytest.mark.parametrize("unit", UNITS)
def test_the_probe_retracts_by_the_unit(unit: str):
    record = _arithmetic_records(1)[0]
    item = probe_item(record, 1, prompt=[1], tokenize=lambda text: [ord(c) for c in text], backtrack_id=-7,
                      seed=0, unit=unit)
    assert item is not None
    assert item.retraction == render_error(unit, item.wrong, -7)
    assert item.retraction == ([-7] * len(item.wrong) if unit == "token" else [-7])


def test_an_unknown_unit_is_a_params_error(tmp_path: Path, params_text: str):
    old = "    unit: token "
    (tmp_path / "params.yaml").write_text(edit(params_text, old, "    unit: sentence "))
    result = run_stage_script("train_sft", tmp_path)
    assert result.returncode == 2, result.stderr
    assert "sft.backtrack.unit" in result.stderr and "'sentence'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_unit_flows_from_sft_through_grpo_and_merge_to_eval(tmp_path: Path, monkeypatch) -> None:
    """prepare -> SFT (unit step) -> GRPO -> merge -> eval: each lineage records step, and rewards and eval
    (its score and probe) resolve with a step Retraction, read from the model's lineage alone."""
    import json

    from llmhalluc.backtrack import retraction
    from tests.tiny_project import run

    seen: list[str] = []
    real = retraction.retraction_for

    def spy(tokenizer, backtrack_id, lineage=None, unit=None):
        made = real(tokenizer, backtrack_id, lineage, unit)
        seen.append(made.unit)
        return made

    monkeypatch.setattr(retraction, "retraction_for", spy)
    monkeypatch.setattr("llmhalluc.rewards.retraction_for", spy)
    run("prepare", "prepare", tmp_path, {"prepare.backtrack.error_rate": 0.5})
    run("train_sft", "sft", tmp_path, {"sft.backtrack.unit": "step", "sft.max_steps": 2})
    run("train_grpo", "grpo", tmp_path, {"grpo.max_steps": 1})
    run("merge", "merge", tmp_path)
    run("eval", "eval", tmp_path, {"eval.max_new_tokens": 16})
    for stage in ("sft", "grpo", "merged"):
        recorded = json.loads((tmp_path / "models" / stage / "lineage.json").read_text())
        assert recorded["retraction"] == {"unit": "step"}, stage
    assert seen and set(seen) == {"step"}  # SFT encoding, the rewards, the completions log and eval: all by step


@pytest.mark.parametrize("name", ["tiny byte-level BPE", "SmolLM2"])
def test_own_error_steps_are_read_from_the_unit_resolved_text(tokenizers, name: str):
    from llmhalluc.diagnostics import step_ends

    tokenizer = tokenizers[name]
    bt = tokenizer.convert_tokens_to_ids(TOKEN)

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ids = [*tokenize("2 + 3 = 6."), bt, *tokenize(" 2 + 3 = 5."), *tokenize(" 5 + 1.5 = 6.5.")]
    # One step backtrack retracted "2 + 3 = 6.": the steps that follow read as written.
    assert [step for _, step in step_ends(ids, tokenizer, bt, "step")] == ["2 + 3 = 6.", "2 + 3 = 5.",
                                                                          "5 + 1.5 = 6.5."]
    # Per token the same backtrack only deletes the ".", and the next step reads glued to the wrong one.
    assert [step for _, step in step_ends(ids, tokenizer, bt, "token")][1] == "2 + 3 = 6 2 + 3 = 5."
