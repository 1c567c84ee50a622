"""Retry data from the model's own mistakes: which sampled step certifies an error, mining on a stub, the
round trip through encoding and resolution, a two-pass train_sft, and the params check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmhalluc import evaluation
from llmhalluc.backtrack.encoding import encode_example
from llmhalluc.backtrack.retraction import Retraction, retraction_for
from llmhalluc.backtrack.token import add_backtrack_token
from llmhalluc.datasets.records import Error, Record, chat_prompt, read_jsonl
from llmhalluc.errors import ParamsError
from llmhalluc.mining import choose, mine, own_error
from llmhalluc.models import load_model_and_tokenizer
from llmhalluc.params import load_section
from llmhalluc.tiny_model import build_tiny_model
from tests.tiny_project import TINY, run, write_params

QUESTION = "Start with 8. Add 4. Then subtract 3."
GOLD = Record(id="r1", question=QUESTION, steps=["8 + 4 = 12.", "12 - 3 = 9."], answer="9",
              errors=[Error(step=1, text="12 - 3 = 8.")], prompt=chat_prompt(QUESTION, "Solve."))


# --------------------------------------------------------------------------- the pure function


@pytest.mark.parametrize(("completion", "expected"), [
    ("8 + 4 = 12. 12 - 3 = 7. The answer is 7.", Error(step=1, text="12 - 3 = 7.")),  # wrong step 1
    ("8 + 4 = 13. 13 - 3 = 10. The answer is 10.", Error(step=0, text="8 + 4 = 13.")),  # the first wins
    ("8 + 4 = 12. 12 - 3 = 9. The answer is 10.", Error(step=2, text="The answer is 10.")),  # wrong answer
    ("8 + 4 = 12. 12 - 3 = 9. The answer is 9.", None),        # all right
    ("4 + 8 = 12. 12 - 3 = 9. The answer is 9.", None),        # different but right: nothing to certify
    ("Add them up. 12 - 3 = 7. The answer is 7.", None),       # uncheckable first difference
    ("8 + 4 = 12. 12 - 3 = 8", None),                          # unfinished step (cut by max_new_tokens)
    ("8 + 4 = 12.", None),                                     # stops early: no error shown
    ("8 + 4 = 12. 12 - 3 = 9. So 9.", None),                   # not an answer sentence
    ("", None),
])
def test_own_error(completion: str, expected: Error | None) -> None:
    assert own_error(GOLD, completion) == expected


def test_choose_is_a_seeded_share() -> None:
    records = [GOLD] * 10
    assert choose(records, 0.3, seed=0) == choose(records, 0.3, seed=0)
    assert len(choose(records, 0.3, seed=0)) == 3 and choose(records, 0.0, seed=0) == []
    assert choose(records, 1.0, seed=5) == list(range(10))


# --------------------------------------------------------------------------- mining on a stub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    corpus = [f"{QUESTION} 8 + 4 = 12. 12 - 3 = 9. The answer is 9."] * 20
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", corpus, vocab_size=300, hidden_size=32,
                              num_heads=2)
    model, tokenizer = load_model_and_tokenizer(str(folder))
    return model, tokenizer, add_backtrack_token(model, tokenizer)


def test_mine_on_a_stub_model(tiny, monkeypatch) -> None:
    model, tokenizer, bt = tiny

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    other = Record(id="r2", question=QUESTION, steps=GOLD.steps, answer="9", errors=[Error(0, "8 + 4 = 11.")],
                   prompt=GOLD.prompt)
    retracted = ids("8 + 4 = 13.")  # wrong, then taken back: resolves to the right solution
    samples = {  # per record, two samples, in the order mine asks for them
        "r1": [ids("8 + 4 = 12. 12 - 3 = 9. The answer is 9."), ids("8 + 4 = 12. 12 - 3 = 6. The answer is 6.")],
        "r2": [retracted + [bt] * len(retracted) + ids(" 8 + 4 = 12. 12 - 3 = 9. The answer is 9."),
               ids("4 + 8 = 12. The answer is 9.")],
    }
    calls = []

    def fake_generate(model_, tokenizer_, prompts, *, batch_size, sampling):
        calls.append((len(prompts), batch_size, sampling))
        return [*samples["r1"], *samples["r2"]]

    monkeypatch.setattr(evaluation, "generate_transformers", fake_generate)
    out, summary = mine(model, tokenizer, [GOLD, other], samples=2, temperature=0.7, max_new_tokens=16,
                        batch_size=8, seed=3, backtrack_id=bt, unit="token")
    assert calls == [(4, 8, evaluation.Sampling(max_new_tokens=16, do_sample=True, temperature=0.7, seed=3))]
    assert out[0].errors == [Error(step=1, text="12 - 3 = 6.")]      # the model's own mistake replaces prepare's
    assert out[1] is other and out[1].errors == [Error(0, "8 + 4 = 11.")]  # none certified: keeps prepare's
    assert summary == {"records_tried": 2, "samples_drawn": 4, "records_mined": 1, "mined_share": 0.5,
                       "examples": [{"id": "r1", "step": 1, "text": "12 - 3 = 6."}]}


@pytest.mark.parametrize("unit", ["token", "step"])
def test_mined_error_round_trips(tiny, unit: str) -> None:
    """An example built from a mined error resolves back to the clean completion under the unit."""
    _, tokenizer, bt = tiny
    error = own_error(GOLD, "8 + 4 = 12. 12 - 3 = 7. The answer is 7.")
    retraction = retraction_for(tokenizer, bt, unit=unit)
    prompt = tokenizer.apply_chat_template(GOLD.prompt, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    end = tokenizer.encode(tokenizer.eos_token, add_special_tokens=False)
    example = encode_example(prompt, GOLD.steps, GOLD.answer_sentence(), [(error.step, error.text)],
                             lambda t: tokenizer.encode(t, add_special_tokens=False), bt, end, mask_errors=False,
                             retraction=retraction)
    completion = example["input_ids"][len(prompt):-len(end)]
    assert isinstance(retraction, Retraction) and completion.count(bt) == (
        1 if unit == "step" else len(tokenizer.encode(" 12 - 3 = 7.", add_special_tokens=False)))
    assert tokenizer.decode(retraction.resolve(completion)) == GOLD.solution()


# --------------------------------------------------------------------------- params and train_sft


def test_after_steps_must_be_below_max_steps(tmp_path: Path) -> None:
    (tmp_path / "data/prepared").mkdir(parents=True)
    path = write_params(tmp_path, {**TINY, "sft.data_dir": str(tmp_path / "data/prepared"),
                                   "sft.own_errors.rate": 0.5, "sft.own_errors.after_steps": 6})
    with pytest.raises(ParamsError) as caught:
        load_section("sft", path)
    message = str(caught.value)
    assert "sft.own_errors.after_steps" in message and "sft.max_steps is 6" in message
    path = write_params(tmp_path, {**TINY, "sft.data_dir": str(tmp_path / "data/prepared"),
                                   "sft.own_errors.rate": 0.0, "sft.own_errors.after_steps": 6})
    load_section("sft", path)  # off: after_steps is not read


def test_two_pass_train_sft(tmp_path: Path) -> None:
    run("prepare", "prepare", tmp_path, {"prepare.backtrack.error_rate": 0.5})
    run("train_sft", "sft", tmp_path, {"sft.own_errors.rate": 0.5, "sft.own_errors.after_steps": 3,
                                       "sft.own_errors.samples": 2, "sft.own_errors.max_new_tokens": 24})
    out = tmp_path / "models/sft"
    lineage = json.loads((out / "lineage.json").read_text())
    own = lineage["own_errors"]
    assert own["records_tried"] == 32 and own["samples_drawn"] == 64 and own["file"] == "own_errors.jsonl"
    assert 0 <= own["records_mined"] <= 32
    mined = [json.loads(line) for line in (out / "own_errors.jsonl").read_text().splitlines()]
    assert len(mined) == TINY["prepare.sizes.sft"]
    # One curve over the whole budget: steps 1..max_steps once each, pass 2 after pass 1.
    metrics = json.loads((tmp_path / "dvclive/train_sft/metrics.json").read_text())
    assert metrics["step"] == TINY["sft.max_steps"] and metrics["own_errors"]["records_tried"] == 32
    rows = (tmp_path / "dvclive/train_sft/plots/metrics/train/loss.tsv").read_text().split()
    assert [int(s) for s in rows[2::2]] == list(range(1, 7))
    # Neither pass leaves checkpoints behind.
    assert not list((tmp_path / "checkpoints/sft").rglob("checkpoint-*"))
    assert not (tmp_path / "checkpoints/sft/clean").exists()


def test_two_pass_control_with_synthetic_errors(tmp_path: Path) -> None:
    """source: synthetic: the same two passes, and every chosen record gets a near miss of one of its steps,
    with no sampling; the other records are trained as prepare wrote them (here without errors)."""
    run("prepare", "prepare", tmp_path, {"prepare.backtrack.error_rate": 0.0})
    run("train_sft", "sft", tmp_path, {"sft.own_errors.rate": 0.5, "sft.own_errors.after_steps": 3,
                                       "sft.own_errors.source": "synthetic"})
    own = json.loads((tmp_path / "models/sft/lineage.json").read_text())["own_errors"]
    assert (own["records_tried"], own["samples_drawn"], own["records_mined"]) == (32, 0, 32)
    mixed = read_jsonl(tmp_path / "models/sft/own_errors.jsonl")
    with_errors = [r for r in mixed if r.errors]
    assert len(with_errors) == 32 and len(mixed) == TINY["prepare.sizes.sft"]
    for record in with_errors:
        (error,) = record.errors
        assert error.text != record.segments()[error.step]  # a near miss of the step it replaces
    metrics = json.loads((tmp_path / "dvclive/train_sft/metrics.json").read_text())
    assert metrics["step"] == TINY["sft.max_steps"]


def test_two_pass_run_killed_in_pass_2_resumes_and_matches(tmp_path: Path, monkeypatch, capsys) -> None:
    """Killed after pass 2 saved a checkpoint (the newest half written): the rerun resumes pass 1 at its end,
    mines the same records, resumes pass 2, and ends with the weights and curves of an uninterrupted run."""
    from llmhalluc import training_run
    from tests.test_train_sft import curve, weights_hash

    own = {"sft.own_errors.rate": 0.5, "sft.own_errors.after_steps": 3, "sft.own_errors.samples": 2,
           "sft.own_errors.max_new_tokens": 24}
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for folder in (whole, crashed):
        folder.mkdir()
        run("prepare", "prepare", folder, {"prepare.backtrack.error_rate": 0.5})
    run("train_sft", "sft", whole, own)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(training_run, "publish", killed)
        with pytest.raises(KeyboardInterrupt):
            run("train_sft", "sft", crashed, own)
    ckpts = crashed / "checkpoints/sft"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert sorted(p.name for p in (ckpts / "clean").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    (ckpts / "checkpoint-3" / "trainer_state.json").unlink()         # died while saving pass 2's last step
    capsys.readouterr()

    run("train_sft", "sft", crashed, own)
    log = capsys.readouterr().out
    assert "checkpoints/sft/clean/checkpoint-3 is this run's last step" in log  # pass 1: done, not trained again
    assert "resuming from checkpoints/sft/checkpoint-2" in log           # pass 2: the last complete one
    assert weights_hash(crashed / "models/sft") == weights_hash(whole / "models/sft")
    assert (crashed / "models/sft/own_errors.jsonl").read_text() == (whole / "models/sft/own_errors.jsonl").read_text()
    assert curve(crashed) == curve(whole) and [s for s, _ in curve(whole)] == list(range(1, 7))
    assert not list(ckpts.rglob("checkpoint-*")) and not (ckpts / "clean").exists()
