"""prepare: registry, converters on real dataset formats, splits without leakage, stats.

Each test runs the stage script in a temporary folder holding a params.yaml
(the repo's, edited), the repo's registry plus test entries, and fixture rows
written in the real GSM8K / SQuAD v2 formats. Bad rows and bad sources are
catalogued in tests/test_bad_data_catalogue.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.conftest import ROOT, edit, run_stage_script, set_params

FIXTURES = Path(__file__).parent / "fixtures"

EXTRA_ENTRIES = """
gsm8k_sample:
  source: {path: data/raw/gsm8k_sample.jsonl}
  converter: gsm8k
squad_local:
  source: {path: data/raw/squad_v2_sample.jsonl}
  converter: squad_v2
  prompt: "Context: {context}\\n\\nQuestion: {question}"
"""


def workspace(tmp_path: Path, params: str, registry_extra: str = EXTRA_ENTRIES) -> Path:
    (tmp_path / "configs").mkdir(parents=True)
    (tmp_path / "configs" / "datasets.yaml").write_text((ROOT / "configs" / "datasets.yaml").read_text()
                                                        + registry_extra)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for fixture in FIXTURES.glob("*.jsonl"):
        shutil.copy(fixture, tmp_path / "data" / "raw" / fixture.name)
    (tmp_path / "params.yaml").write_text(params)
    return tmp_path


def small(params: str, sft: int = 60, grpo: int = 10, eval_: int = 20) -> str:
    params = edit(params, "    sft: 1500 ", f"    sft: {sft} ")
    params = edit(params, "    grpo: 128 ", f"    grpo: {grpo} ")
    return edit(params, "    eval: 200 ", f"    eval: {eval_} ")


def prepared(work: Path, name: str) -> list[dict]:
    lines = (work / "data" / "prepared" / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run_ok(work: Path) -> dict:
    result = run_stage_script("prepare", work)
    assert result.returncode == 0, result.stderr
    return json.loads((work / "metrics" / "prepare.json").read_text())


def test_default_sets_are_disjoint_deterministic_and_load_with_datasets(tmp_path: Path, params_text: str):
    from datasets import load_dataset

    work = workspace(tmp_path, small(params_text))
    stats = run_ok(work)
    assert stats["rows"] == {"sft": 60, "grpo": 10, "eval": 20}
    sets = {name: prepared(work, name) for name in ("sft", "grpo", "eval")}
    questions = {name: {r["question"] for r in rows} for name, rows in sets.items()}
    assert not questions["eval"] & (questions["sft"] | questions["grpo"])
    assert not questions["sft"] & questions["grpo"]
    first = (work / "data" / "prepared" / "sft.jsonl").read_bytes()
    run_ok(work)
    assert (work / "data" / "prepared" / "sft.jsonl").read_bytes() == first
    loaded = load_dataset("json", data_files=str(work / "data" / "prepared" / "eval.jsonl"), split="train")
    assert len(loaded) == 20 and loaded[0]["prompt"][-1]["role"] == "user"

    (work / "params.yaml").write_text(small(edit(params_text, "  seed: 0 ", "  seed: 1 ")))
    run_ok(work)
    assert (work / "data" / "prepared" / "sft.jsonl").read_bytes() != first


def test_every_generated_chain_is_correct_arithmetic():
    import random

    from llmhalluc.datasets import arithmetic
    from llmhalluc.params.sections import ArithmeticParams

    params = ArithmeticParams(min_steps=1, max_steps=4, max_operand=30, allow_negative=True)
    stream = arithmetic.generate(params, random.Random(7))
    rows = [next(stream) for _ in range(500)]
    again = arithmetic.generate(params, random.Random(7))
    assert rows == [next(again) for _ in range(500)]
    for row in rows:
        # Recompute each chain independently of the converter's own check.
        numbers = [int(n) for n in re.findall(r"-?\d+", row["question"])]
        value = numbers[0]
        ops = re.findall(r"(Add|Subtract) (\d+)", row["question"])
        assert len(ops) == len(row["steps"]) and 1 <= len(ops) <= 4
        for (op, operand), step in zip(ops, row["steps"], strict=True):
            new = value + int(operand) if op == "Add" else value - int(operand)
            assert step == f"{value} {'+' if op == 'Add' else '-'} {operand} = {new}."
            value = new
        assert row["answer"] == str(value)
        assert arithmetic.check_chain(row["steps"], row["answer"]) is None
    assert arithmetic.check_chain(["1 + 2 = 4."], "4") is not None
    assert arithmetic.check_chain(["1 + 2 = 3.", "4 + 1 = 5."], "5") is not None


def test_gsm8k_local_file_answers_are_the_number_after_hashes(tmp_path: Path, params_text: str):
    params = small(params_text, sft=5, grpo=1, eval_=2)
    params = set_params(params, {"prepare.train": ["gsm8k_sample"], "prepare.eval": ["gsm8k_sample"]})
    work = workspace(tmp_path, params)
    stats = run_ok(work)
    assert stats["rows"] == {"sft": 5, "grpo": 1, "eval": 2}  # 8 rows: eval's slice first, the rest to train
    raw = {json.loads(line)["question"]: json.loads(line)["answer"]
           for line in (FIXTURES / "gsm8k_sample.jsonl").read_text().splitlines()}
    records = [r for name in ("sft", "grpo", "eval") for r in prepared(work, name)]
    assert len(records) == 8
    for record in records:
        final = raw[record["question"]].rpartition("####")[2].strip().rstrip(".").replace(",", "")
        assert record["answer"] == (final.rstrip("0") if "." in final else final)
        assert not any("<<" in step or ">>" in step for step in record["steps"])
        assert record["steps"] and record["answerable"]
    by_question = {r["question"]: r for r in records}
    priya = next(r for q, r in by_question.items() if q.startswith("Priya"))
    assert priya["steps"] == ["Priya baked 36/2 = 18 muffins on Tuesday.",
                              "Priya baked 36+18 = 54 muffins on Monday and Tuesday."]
    assert {r["answer"] for r in records} >= {"54", "10", "20", "1080", "-3", "2.5", "6", "1265"}


def test_squad_v2_unanswerable_questions_get_the_abstain_answer(tmp_path: Path, params_text: str):
    params = small(params_text, sft=3, grpo=1, eval_=2)
    params = set_params(params, {"prepare.train": ["squad_local"], "prepare.eval": ["squad_local"]})
    params = edit(params, "  abstain_answer: unanswerable ", "  abstain_answer: cannot be answered ")
    work = workspace(tmp_path, params)
    stats = run_ok(work)
    records = [r for name in ("sft", "grpo", "eval") for r in prepared(work, name)]
    unanswerable = [r for r in records if not r["answerable"]]
    assert len(unanswerable) == 3 and all(r["answer"] == "cannot be answered" for r in unanswerable)
    assert {r["answer"] for r in records if r["answerable"]} == {"France", "10th and 11th centuries",
                                                                  "Computational complexity theory"}
    assert all(r["question"].startswith("Context: ") and "\n\nQuestion: " in r["question"] for r in records)
    assert all(r["steps"] == [] for r in records)
    total = sum(stats["rows"].values())
    assert total == 6
    meta = json.loads((work / "data" / "prepared" / "meta.json").read_text())
    assert meta["abstain_answer"] == "cannot be answered"


def test_generic_csv_through_column_mapping(tmp_path: Path, params_text: str):
    registry = EXTRA_ENTRIES + """
my_qa:
  source: {path: data/raw/qa.csv}
  converter: generic
  columns: {question: prompt_text, answer: gold, id: key}
  prompt: "Q: {question}"
"""
    params = small(params_text, sft=4, grpo=1, eval_=1)
    params = set_params(params, {"prepare.train": ["my_qa"], "prepare.eval": ["my_qa"]})
    work = workspace(tmp_path, params, registry)
    rows = ["key,prompt_text,gold"] + [f"k{i},What is {i} plus {i}?,\"{2 * i:,}\"" for i in range(600, 606)]
    (work / "data" / "raw" / "qa.csv").write_text("\n".join(rows) + "\n")
    run_ok(work)
    records = [r for name in ("sft", "grpo", "eval") for r in prepared(work, name)]
    assert {r["id"] for r in records} == {f"my_qa-k{i}" for i in range(600, 606)}
    assert all(r["question"].startswith("Q: What is ") for r in records)
    assert {r["answer"] for r in records} == {str(2 * i) for i in range(600, 606)}


def test_augmentation_rate_and_plausible_errors(tmp_path: Path, params_text: str):
    params = small(edit(params_text, "    error_rate: 0.0 ", "    error_rate: 0.5 "), sft=400)
    work = workspace(tmp_path, params)
    stats = run_ok(work)
    sft = prepared(work, "sft")
    share = sum(bool(r["errors"]) for r in sft) / len(sft)
    assert 0.4 < share < 0.6 and stats["augmented_fraction"] == round(share, 4)
    for record in sft:
        segments = [*record["steps"], f"The answer is {record['answer']}."]
        for error in record["errors"]:
            correct = segments[error["step"]]
            assert error["text"] != correct
            # plausible: the same statement with a near-miss number
            assert re.sub(r"-?\d+", "N", error["text"]) == re.sub(r"-?\d+", "N", correct)
    assert all(not r["errors"] for r in prepared(work, "grpo") + prepared(work, "eval"))

    (work / "params.yaml").write_text(small(params_text, sft=400))
    run_ok(work)
    baseline = prepared(work, "sft")
    assert [r["id"] for r in baseline] == [r["id"] for r in sft]  # error_rate 0: the same examples, error-free
    assert not any(r["errors"] for r in baseline)


def test_leakage_between_two_sources_is_an_error(tmp_path: Path, params_text: str):
    registry = EXTRA_ENTRIES + """
gsm8k_copy:
  source: {path: data/raw/gsm8k_copy.jsonl}
  converter: gsm8k
"""
    params = small(params_text, sft=7, grpo=1, eval_=2)
    params = set_params(params, {"prepare.train": ["gsm8k_sample"], "prepare.eval": ["gsm8k_copy"]})
    work = workspace(tmp_path, params, registry)
    # The same problem with different case and spacing is still the same problem.
    line = json.loads((FIXTURES / "gsm8k_sample.jsonl").read_text().splitlines()[0])
    line["question"] = "  " + line["question"].upper()
    (work / "data" / "raw" / "gsm8k_copy.jsonl").write_text(json.dumps(line) + "\n")
    result = run_stage_script("prepare", work)
    assert result.returncode == 3
    assert "appear in both train and eval" in result.stderr and "gsm8k_sample-" in result.stderr
    assert not (work / "data" / "prepared").exists()


def test_registry_and_dataset_names_are_params_errors(tmp_path: Path, params_text: str):
    registry = EXTRA_ENTRIES + """
broken:
  source: {path: data/raw/gsm8k_sample.jsonl, hub: openai/gsm8k}
  converter: gsm8kk
  prompt: "{question} {answer}"
mapped:
  source: {path: data/raw/gsm8k_sample.jsonl}
  converter: gsm8k
  colums: {question: problem}
"""
    work = workspace(tmp_path, params_text, registry)
    result = run_stage_script("prepare", work, "--dry-run")
    assert result.returncode == 2
    lines = (work / "configs" / "datasets.yaml").read_text().splitlines()
    line_of = {key: next(i for i, text in enumerate(lines, 1) if text.strip().startswith(key))
               for key in ("converter: gsm8kk", "colums:")}
    assert f"datasets.yaml:{line_of['converter: gsm8kk']}: broken.converter: unknown converter 'gsm8kk' " \
           "(did you mean gsm8k?" in result.stderr
    assert "broken.source: give exactly one of hub, path, builtin (got hub, path)" in result.stderr
    assert "broken.prompt: unknown placeholder {answer}" in result.stderr
    assert f"datasets.yaml:{line_of['colums:']}: mapped.colums: unknown key (did you mean mapped.columns?)" \
        in result.stderr

    params = set_params(params_text, {"prepare.eval": ["gsm8k_tset"]})
    work2 = workspace(tmp_path / "two", params)
    result = run_stage_script("prepare", work2, "--dry-run")
    assert result.returncode == 2
    line = 1 + next(i for i, text in enumerate(params.splitlines()) if "gsm8k_tset" in text)  # the name's own line
    assert f"params.yaml:{line}: prepare.eval: unknown dataset 'gsm8k_tset' (did you mean gsm8k_test " in result.stderr


def test_mapped_column_missing_from_source_is_a_params_error(tmp_path: Path, params_text: str):
    registry = EXTRA_ENTRIES + """
mapped:
  source: {path: data/raw/gsm8k_sample.jsonl}
  converter: gsm8k
  columns: {question: problem}
"""
    params = small(params_text, sft=1, grpo=1, eval_=1)
    params = set_params(params, {"prepare.train": ["mapped"]})
    work = workspace(tmp_path, params, registry)
    result = run_stage_script("prepare", work)
    assert result.returncode == 2
    assert "mapped.columns.question: column 'problem' is not in data/raw/gsm8k_sample.jsonl (columns: answer, " \
           "question)" in result.stderr


#: Rows in GSM8K's shape, written for this test (not GSM8K's own): calculator notes, units, a '#### N' line.
GSM8K_STYLE_TRAIN = [
    ("A baker fills 12 trays with 6 rolls each. How many rolls does he bake?",
     "He bakes 12 * 6 = <<12*6=72>>72 rolls.\n#### 72"),
    ("A bus ride takes 35 minutes and the walk after it 18 minutes. How long is the trip?",
     "The trip takes 35 + 18 = <<35+18=53>>53 minutes.\n#### 53"),
    ("Mia earns $9 an hour and works 2 hours a day. How much does she earn per day?",
     "She earns 9 * 2 = $<<9*2=18>>18 per day.\n#### 18"),
    ("A farm sells 90 boxes of 12 apples. How many apples is that?",
     "That is 90 * 12 = <<90*12=1080>>1,080 apples.\n#### 1,080"),
]
GSM8K_STYLE_TEST = [
    ("A pen costs $3 and a notebook $4. What do 2 pens and a notebook cost?",
     "Two pens cost 2 * 3 = $<<2*3=6>>6.\nWith the notebook: 6 + 4 = $<<6+4=10>>10.\n#### 10"),
    ("A tank holds 40 liters and loses 15. How many liters are left?",
     "40 - 15 = <<40-15=25>>25 liters are left.\n#### 25"),
]


def test_gsm8k_offline_entries_read_data_raw_and_say_how_to_fill_it(tmp_path: Path, params_text: str):
    params = small(params_text, sft=3, grpo=1, eval_=2)
    params = set_params(params, {"prepare.train": ["gsm8k_local"], "prepare.eval": ["gsm8k_test_local"]})
    work = workspace(tmp_path, params, registry_extra="")
    for fixture in (work / "data" / "raw").glob("*.jsonl"):
        fixture.unlink()

    missing = run_stage_script("prepare", work)  # the registry's own entries, nothing in data/raw yet
    assert missing.returncode == 3
    assert "data/raw/gsm8k_train.jsonl: source file not found" in missing.stderr
    assert "load_dataset('openai/gsm8k', 'main', split='train').to_json('data/raw/gsm8k_train.jsonl')" in missing.stderr

    for name, rows in (("gsm8k_train", GSM8K_STYLE_TRAIN), ("gsm8k_test", GSM8K_STYLE_TEST)):
        lines = [json.dumps({"question": q, "answer": a}) for q, a in rows]
        (work / "data" / "raw" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    stats = run_ok(work)
    assert stats["rows"] == {"sft": 3, "grpo": 1, "eval": 2}
    assert sorted(r["answer"] for r in prepared(work, "eval")) == ["10", "25"]  # the test file, and only it
    train = prepared(work, "sft") + prepared(work, "grpo")
    assert sorted(r["answer"] for r in train) == ["1080", "18", "53", "72"]


def test_a_registry_entry_written_twice_is_an_error_naming_both_lines(tmp_path: Path, params_text: str):
    """Two entries of one name: the second would silently replace the first in a plain dict."""
    registry = EXTRA_ENTRIES + """
arithmetic:
  source: {builtin: arithmetic}
  converter: arithmetic
"""
    work = workspace(tmp_path, params_text, registry)
    result = run_stage_script("prepare", work, "--dry-run")
    assert result.returncode == 2
    last = len((work / "configs" / "datasets.yaml").read_text().splitlines()) - 2
    assert f'datasets.yaml:{last}: arithmetic: invalid YAML: found duplicate key "arithmetic"' in result.stderr
    assert not (work / "data" / "prepared").exists()
