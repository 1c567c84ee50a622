"""The eval stage end to end on tiny models: what a user opens afterwards, and the errors that stop it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llmhalluc.answers import DEFAULT_PATTERN
from llmhalluc.datasets.records import Record, chat_prompt, write_jsonl
from llmhalluc.params import load_section
from tests.conftest import ROOT, dvc_yaml, edit, run_stage_script

MODELS_BLOCK = (
    "  models:                       # name -> model folder or hub id, each evaluated and reported under its name\n"
    "    sft: models/sft             # the SFT stage's out (a full model or a LoRA adapter folder)\n"
    "    grpo: models/merged         # the GRPO model, merged (merge's out)\n"
)
QUESTIONS = [("Start with 3. Add 4. What is the result?", ["3 + 4 = 7."], "7"),
             ("Start with 1. Add 1. What is the result?", ["1 + 1 = 2."], "2"),
             ("Start with 9. Subtract 2. What is the result?", ["9 - 2 = 7."], "7"),
             ("Start with 5. Add 3. What is the result?", ["5 + 3 = 8."], "8"),
             ("Start with 2. Add 9. Subtract 1. What is the result?", ["2 + 9 = 11.", "11 - 1 = 10."], "10")]
ABSTAIN = "cannot be answered"


def eval_params(params_text: str, models: str = "    sft: models/a\n    grpo: models/b\n", **changes: str) -> str:
    text = edit(params_text, MODELS_BLOCK, "  models:\n" + models)
    text = edit(text, "\n  max_new_tokens: 64 ", "\n  max_new_tokens: 12 ")
    text = edit(text, "\n  batch_size: 64 ", "\n  batch_size: 4 ")
    for old, new in changes.items():
        text = edit(text, old, new)
    return text


def write_records(folder: Path) -> list[Record]:
    records = [Record(id=f"q{i}", question=q, steps=steps, answer=a, prompt=chat_prompt(q, "Solve the problem."))
               for i, (q, steps, a) in enumerate(QUESTIONS)]
    question = "Start with the number of moons of Zorblax. Add 2. What is the result?"
    records.append(Record(id="u0", question=question, steps=[], answer=ABSTAIN, answerable=False,
                          prompt=chat_prompt(question, "Solve the problem.")))
    write_jsonl(records, folder / "eval.jsonl")
    (folder / "meta.json").write_text(json.dumps({"abstain_answer": ABSTAIN}))
    return records


def build_model(folder: Path, seed: int, lineage: dict | None = None) -> Path:
    from llmhalluc.backtrack.token import add_backtrack_token
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.tiny_model import build_tiny_model

    corpus = [f"Start with {a}. Add {b}. {a} + {b} = {a + b}. The answer is {a + b}." for a in range(10)
              for b in range(10)] + [f"The answer is {ABSTAIN}."]
    build_tiny_model(folder, corpus, hidden_size=32, intermediate_size=64, seed=seed)
    model, tokenizer = load_model_and_tokenizer(str(folder), dtype="float32")
    add_backtrack_token(model, tokenizer, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if lineage is not None:
        (folder / "lineage.json").write_text(json.dumps(lineage))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with two tiny models (a with lineage, b without) and six eval records."""
    root = tmp_path_factory.mktemp("eval-stage")
    build_model(root / "models" / "a", seed=0, lineage={"stage": "train_sft", "kind": "full",
                                                         "backtrack_token": "<|backtrack|>"})
    build_model(root / "models" / "b", seed=1)
    write_records(root / "data" / "prepared")
    return root


@pytest.fixture(scope="module")
def first_run(workspace: Path) -> Path:
    (workspace / "params.yaml").write_text(eval_params((ROOT / "params.yaml").read_text()))
    result = run_stage_script("eval", workspace, "--params", "params.yaml")
    assert result.returncode == 0, result.stderr
    (workspace / "eval-stdout.txt").write_text(result.stdout)  # what the user read (test_progress_...)
    return workspace


def test_progress_per_model_and_part_then_a_table_of_key_results(first_run: Path):
    lines = (first_run / "eval-stdout.txt").read_text().splitlines()
    for name, path in (("sft", "models/a"), ("grpo", "models/b")):
        at = lines.index(f"eval: {name} ({path}), model {['sft', 'grpo'].index(name) + 1} of 2")
        parts = [line for line in lines[at + 1:] if line.startswith(f"eval: {name}: ")][:6]
        assert [line.split(": ", 2)[2].split(" ")[0] for line in parts] == \
            ["greedy", "probe", "sampled:", "own", "rollback", "done"], parts
        assert parts[0] == f"eval: {name}: greedy answers to 6 problems (transformers)"
        assert parts[1] == f"eval: {name}: probe plausible: 6 wrong steps in 6 problems"
        assert parts[2] == f"eval: {name}: sampled: 6 problems x 4 samples"
        assert parts[4].startswith(f"eval: {name}: rollback decoding of 6 problems (")
    metrics = json.loads((first_run / "metrics" / "eval.json").read_text())
    table = lines[lines.index("  model  accuracy  rollback  detection  correction  false pos  probe"):][:3]
    for row, name in zip(table[1:], ("sft", "grpo"), strict=True):
        assert row.split()[:2] == [name, f"{metrics[name]['accuracy']:.3f}"]
        assert row.split()[-1] == "plausible"
    assert "None" not in "\n".join(lines) and lines[-1].startswith("eval: done in ")


def test_metrics_put_every_model_side_by_side(first_run: Path):
    metrics = json.loads((first_run / "metrics" / "eval.json").read_text())
    assert list(metrics) == ["sft", "grpo", "transitions"]
    for block in (metrics["sft"], metrics["grpo"]):
        assert block["examples"] == 6
        for key in ("accuracy", "accuracy_unresolved", "hallucination_rate", "abstention_rate", "backtrack_rate",
                    "mean_backtracks", "correction_rate", "mean_length", "abstention_precision",
                    "abstention_recall"):
            assert key in block
        assert 0.0 <= block["accuracy"] <= 1.0 and block["mean_length"] > 0


def test_predictions_are_files_a_user_can_open(first_run: Path):
    records = [json.loads(line) for line in (first_run / "data" / "prepared" / "eval.jsonl").read_text().splitlines()]
    metrics = json.loads((first_run / "metrics" / "eval.json").read_text())
    for name in ("sft", "grpo"):
        rows = [json.loads(line) for line in (first_run / "eval" / "predictions" / f"{name}.jsonl").open()]
        assert [r["id"] for r in rows] == [r["id"] for r in records]
        assert [r["gold"] for r in rows] == [r["answer"] for r in records]
        assert rows[-1]["answerable"] is False
        for row in rows:
            assert row["outcome"] in ("correct", "wrong", "abstained", "no_answer")
            assert isinstance(row["raw"], str) and isinstance(row["resolved"], str)
            assert row["backtracks"] == row["raw"].count("<|backtrack|>")
        # The summary is exactly the per-example rows, aggregated.
        assert metrics[name]["accuracy"] == round(sum(r["correct"] for r in rows) / len(rows), 6)
        assert metrics[name]["hallucination_rate"] == round(sum(r["outcome"] == "wrong" for r in rows) / len(rows), 6)
    with (first_run / "eval" / "predictions.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 12 and {r["model"] for r in table} == {"sft", "grpo"}
    resolved = json.loads((first_run / "eval" / "resolved_params.json").read_text())
    assert resolved["compared"] == {"sft": "models/a", "grpo": "models/b"}
    assert resolved["abstain_answer"] == ABSTAIN  # read from prepare's meta.json, not the default


def test_plot_files_behind_dvc_plots(first_run: Path):
    with (first_run / "plots" / "eval" / "models.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["model"] for r in table] == ["sft", "grpo"]
    metrics = json.loads((first_run / "metrics" / "eval.json").read_text())
    assert float(table[0]["accuracy"]) == metrics["sft"]["accuracy"]
    for name in ("sft", "grpo"):
        with (first_run / "plots" / "eval" / "backtracks" / f"{name}.csv").open() as handle:
            histogram = list(csv.DictReader(handle))
        assert sum(int(r["completions"]) for r in histogram) == 6


def test_diagnostics_are_on_by_default_per_model_and_between_models(first_run: Path):
    metrics = json.loads((first_run / "metrics" / "eval.json").read_text())
    for name in ("sft", "grpo"):
        assert list(metrics[name]["probe"]) == ["plausible"]  # the kind the model trained on (its lineage)
        probe, own, sampled = metrics[name]["probe"]["plausible"], metrics[name]["own_errors"], metrics[name]["sampled"]
        assert probe["items"] == 6  # every step of the five problems with steps; the unanswerable one has none
        for key in ("detection_p_wrong", "detection_p_right", "detection_auroc", "detection_hidden_auroc",
                    "detection_surprise_auroc", "counting_exact", "repair_step", "repair_answer",
                    "correction_backtracked", "correction_right", "false_positive", "correction_rollback_right",
                    "false_positive_rollback"):
            assert 0.0 <= probe[key] <= 1.0, key
        rollback = metrics[name]["rollback"]  # the rollback decoder beside greedy, on the same problems
        rolled = [json.loads(line) for line in (first_run / "eval" / "rollback" / f"{name}.jsonl").open()]
        assert len(rolled) == 6 and rollback["accuracy"] == round(sum(r["correct"] for r in rolled) / 6, 6)
        assert rollback["retries_per_problem"] <= 4 and rollback["tokens_per_problem"] > 0
        assert own["samples"] == 24 and own["steps_checked"] >= own["steps_wrong"] >= 0
        assert sampled["samples"] == 24 and sampled["problems"] == 6  # 4 samples of each of the 6 problems
        assert {"accuracy", "pass@1", "pass@4", "maj@1", "maj@4", "corrected", "broken"} <= set(sampled)
        assert sampled["pass@1"] == sampled["accuracy"]  # pass@1 is the mean accuracy, problem by problem
        probe_rows = [json.loads(line) for line in (first_run / "eval" / "probe" / f"{name}.jsonl").open()]
        assert len(probe_rows) == 6 and {"p_backtrack_wrong", "wrong_step", "repair"} <= set(probe_rows[0])
        samples = [json.loads(line) for line in (first_run / "eval" / "samples" / f"{name}.jsonl").open()]
        assert len(samples) == 24 and all("steps" in s for s in samples)
    flips = metrics["transitions"]["sft->grpo"]
    sft = {r["id"]: r["correct"] for r in map(json.loads, (first_run / "eval" / "predictions" / "sft.jsonl").open())}
    grpo = {r["id"]: r["correct"] for r in map(json.loads, (first_run / "eval" / "predictions" / "grpo.jsonl").open())}
    assert flips["wrong_to_right"] == sum(not sft[i] and grpo[i] for i in sft)
    assert flips["right_to_wrong"] == sum(sft[i] and not grpo[i] for i in sft)
    with (first_run / "plots" / "eval" / "diagnostics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["model"] for r in table] == ["sft", "grpo"] and table[0]["probe_kind"] == "plausible"
    assert float(table[0]["detection_auroc"]) == metrics["sft"]["probe"]["plausible"]["detection_auroc"]


def test_diagnostics_switch_off(workspace: Path, tmp_path: Path):
    (tmp_path / "models").symlink_to(workspace / "models")
    (tmp_path / "data").symlink_to(workspace / "data")
    text = eval_params((ROOT / "params.yaml").read_text())
    yaml = YAML()
    data = yaml.load(text)
    for key in ("probe", "own_errors", "sampled", "rollback"):
        data["eval"][key]["enabled"] = False
    data["eval"]["transitions"] = False
    out = io.StringIO()
    yaml.dump(data, out)
    (tmp_path / "params.yaml").write_text(out.getvalue())
    result = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert list(metrics) == ["sft", "grpo"]
    assert not {"probe", "own_errors", "sampled", "rollback"} & set(metrics["sft"])
    assert not (tmp_path / "eval" / "probe").exists() and not (tmp_path / "eval" / "rollback").exists()


def test_same_params_same_results(first_run: Path):
    before = (first_run / "metrics" / "eval.json").read_text(), (first_run / "eval" / "predictions.csv").read_text()
    result = run_stage_script("eval", first_run, "--params", "params.yaml")
    assert result.returncode == 0, result.stderr
    after = (first_run / "metrics" / "eval.json").read_text(), (first_run / "eval" / "predictions.csv").read_text()
    assert before == after


def _outs(root: Path) -> dict[str, bytes]:
    """Every file eval writes (its out, the plots, the metrics), by path: what DVC hashes."""
    return {str(f.relative_to(root)): f.read_bytes() for folder in ("eval", "plots", "metrics")
            for f in sorted((root / folder).rglob("*")) if f.is_file()}


def test_a_model_whose_inputs_did_not_change_is_not_evaluated_again(workspace: Path, first_run: Path,
                                                                     tmp_path: Path, monkeypatch):
    """The GRPO experiment's case: the SFT model's block comes from the eval cache, the outs as a fresh eval's."""
    monkeypatch.setenv("LLMHALLUC_EVAL_CACHE", "1")
    monkeypatch.setenv("LLMHALLUC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "data").symlink_to(workspace / "data")
    (tmp_path / "models").mkdir()
    for name in ("a", "b"):
        (tmp_path / "models" / name).symlink_to(workspace / "models" / name)
    (tmp_path / "params.yaml").write_text((workspace / "params.yaml").read_text())

    fresh = run_stage_script("eval", tmp_path, "--params", "params.yaml")  # both evaluated, both kept
    assert fresh.returncode == 0, fresh.stderr
    assert "reused" not in fresh.stdout and len(list((tmp_path / "cache" / "eval").glob("*.json"))) == 2
    assert _outs(tmp_path) == _outs(first_run)  # the cache changes nothing in a fresh eval

    again = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert again.returncode == 0, again.stderr
    for name in ("sft", "grpo"):
        assert f"eval: {name}: reused from the eval cache (same model files, eval params, data and code" \
            in again.stdout
    assert "greedy answers" not in again.stdout
    assert _outs(tmp_path) == _outs(first_run)  # byte for byte

    # A new GRPO model (another folder's files at the same path): SFT reused, GRPO evaluated.
    (tmp_path / "models" / "b").unlink()
    build_model(tmp_path / "models" / "b", seed=3)
    changed = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert changed.returncode == 0, changed.stderr
    assert "eval: sft: reused" in changed.stdout and "eval: grpo: reused" not in changed.stdout
    assert "eval: grpo: greedy answers to 6 problems" in changed.stdout


# --------------------------------------------------------------------------- errors leave earlier outs intact


def _earlier_outs(root: Path) -> None:
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "predictions.csv").write_text("earlier")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text('{"earlier": 1}')


def _assert_earlier_outs(root: Path) -> None:
    assert (root / "eval" / "predictions.csv").read_text() == "earlier"
    assert (root / "metrics" / "eval.json").read_text() == '{"earlier": 1}'


@pytest.mark.parametrize(
    ("models", "changes", "fragments"),
    [
        ("    sft: models/a\n    grpo: ./models/none\n", {}, ["eval.models.grpo: path './models/none' does not exist"]),
        ("    sft: models/a\n", {"  backend: transformers ": "  backend: vllm "}, ["eval.backend: vllm needs"]),
        ("    sft: models/a\n    base: models/a\n", {"  include_base: false ": "  include_base: true "},
         ["eval.include_base", "already has one"]),
        ("    s/ft: models/a\n", {}, ["eval.models.s/ft: a model name must be"]),
        ("    sft: models/a\n", {"  include_base: false ": "  include_base: true ", "  base_from: models/sft ":
                                 "  base_from: models/a "}, ["eval.include_base", "records no base model"]),
        ("    sft: models/a\n", {"    n: 4 ": "    n: 3 "},  # k: [1, 4] stays
         ["eval.sampled.k: each k must be in 1..eval.sampled.n (3), got 4"]),
        ("    sft: models/a\n", {"    positions: all ": "    positions: al "},
         ["eval.probe.positions", "did you mean 'all'?"]),
        ("    sft: models/a\n", {"    enabled: true               # detection": "    enabeld: true  # detection"},
         ["eval.probe.enabeld: unknown key (did you mean eval.probe.enabled?)"]),
    ],
    ids=["missing-model", "vllm-on-cpu", "base-twice", "bad-name", "no-base-recorded",
         "k-over-n", "positions-typo", "probe-key-typo"],
)
def test_bad_params_exit_2_naming_the_key(workspace: Path, tmp_path: Path, models, changes, fragments):
    import torch

    if "vllm" in str(changes) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: vllm may be allowed here")
    root = tmp_path
    (root / "models").symlink_to(workspace / "models")
    (root / "data").symlink_to(workspace / "data")
    _earlier_outs(root)
    (root / "params.yaml").write_text(eval_params((ROOT / "params.yaml").read_text(), models, **changes))
    result = run_stage_script("eval", root, "--params", "params.yaml")
    assert result.returncode == 2, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    _assert_earlier_outs(root)


def test_a_bad_meta_file_is_a_data_error_naming_it(workspace: Path, tmp_path: Path):
    (tmp_path / "models").symlink_to(workspace / "models")
    write_records(tmp_path / "data" / "prepared")
    (tmp_path / "data" / "prepared" / "meta.json").write_text('{"abstain_answer": ')
    _earlier_outs(tmp_path)
    (tmp_path / "params.yaml").write_text(eval_params((ROOT / "params.yaml").read_text()))
    result = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert result.returncode == 3, result.stderr
    assert "data/prepared/meta.json: not valid JSON" in result.stderr
    _assert_earlier_outs(tmp_path)


def test_an_eval_question_seen_in_training_is_a_data_error(workspace: Path, tmp_path: Path):
    (tmp_path / "models").symlink_to(workspace / "models")
    records = write_records(tmp_path / "data" / "prepared")
    write_jsonl([Record(id="s7", question=records[2].question, steps=[], answer=records[2].answer)],
                tmp_path / "data" / "prepared" / "sft.jsonl")
    _earlier_outs(tmp_path)
    (tmp_path / "params.yaml").write_text(eval_params((ROOT / "params.yaml").read_text()))
    result = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert result.returncode == 3, result.stderr
    assert "also in data/prepared/sft.jsonl (q2 = s7)" in result.stderr
    _assert_earlier_outs(tmp_path)


def test_a_tokenizer_missing_its_recorded_token_is_a_data_error(workspace: Path, tmp_path: Path):
    (tmp_path / "data").symlink_to(workspace / "data")
    build_model(tmp_path / "models" / "odd", seed=2, lineage={"kind": "full", "backtrack_token": "<|never-added|>"})
    _earlier_outs(tmp_path)
    text = eval_params((ROOT / "params.yaml").read_text(), "    odd: models/odd\n")
    (tmp_path / "params.yaml").write_text(text)
    result = run_stage_script("eval", tmp_path, "--params", "params.yaml")
    assert result.returncode == 3, result.stderr
    assert "'<|never-added|>'" in result.stderr and "models/odd/lineage.json" in result.stderr
    _assert_earlier_outs(tmp_path)


# --------------------------------------------------------------------------- the repo's own files


def test_dvc_eval_stage_tracks_every_model_it_reads_and_declares_its_plots():
    dvc = dvc_yaml(ROOT)
    stage = dvc["stages"]["eval"]
    p = load_section("eval", ROOT / "params.yaml", for_run=False).project
    assert set(p.models.values()) <= set(stage["deps"])
    assert f"{p.data_dir}" in stage["deps"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    assert {p.out_dir, p.plots_dir} <= outs
    plotted = set()
    for plot in dvc["plots"]:
        (plot_id, spec), = plot.items()
        ys = spec.get("y")
        plotted |= set(ys) if isinstance(ys, dict) else {plot_id}
    assert {f"{p.plots_dir}/models.csv", f"{p.plots_dir}/backtracks", f"{p.plots_dir}/diagnostics.csv"} <= plotted
    assert "llmhalluc/diagnostics" in stage["deps"]


def test_params_file_spells_out_the_default_answer_pattern():
    assert load_section("prepare", ROOT / "params.yaml", for_run=False).project.answer_pattern == DEFAULT_PATTERN
