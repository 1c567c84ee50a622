"""The bad-data catalogue: every way a source row, a source file or prepared data can be wrong.

Row faults run over every local format a row can have (JSON Lines, a JSON
list, CSV) and every reason a converter refuses a row (the catalogue checks it
names each BadRow kind in llmhalluc/datasets/converters.py). Each case:

- runs prepare once on good data (the earlier outs), then on the bad data;
- asserts exit 3, the row's location (`file:line`, `file[index]`, CSV's
  spreadsheet line), the reason, the converter and the way out;
- asserts data/prepared and metrics/prepare.json are byte-identical and no
  staging folder is left;
- runs again with `prepare.on_bad_row: skip` and finds the drop counted under
  `<entry>/<reason>` in metrics/prepare.json.

Source faults (empty, missing column, unreadable) fail whatever on_bad_row
says. Prepared data read by the later stages (train_sft, train_grpo, eval)
that is truncated, malformed or of the wrong shape stops them with exit 3 and
`file:line` before any model is loaded.

Stages run in-process (tests/outs.py) to keep dozens of runs cheap; one case
runs as its own process to pin the real exit code.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, edit, run_stage_script, set_params
from tests.outs import run_in_process, stray_staging, tree

GOOD = [{"question": "How many apples?", "answer": "2 + 2 = 4.\n#### 4"},
        {"question": "How many pears?", "answer": "3 + 4 = 7.\n#### 7"}]

#: registry entries reading the same rows in each local format
FORMATS = {"jsonl": "gsm8k", "json": "gsm8k", "csv": "gsm8k"}
REGISTRY = "".join(f"\nbad_{fmt}:\n  source: {{path: data/raw/rows.{fmt}}}\n  converter: {conv}\n"
                   for fmt, conv in FORMATS.items())
REGISTRY += """
bad_squad:
  source: {path: data/raw/rows_squad.jsonl}
  converter: squad_v2
bad_generic:
  source: {path: data/raw/rows_generic.jsonl}
  converter: generic
bad_arithmetic:
  source: {path: data/raw/rows_arithmetic.jsonl}
  converter: arithmetic
"""
#: entry -> the line of its `source:` in the test registry (configs/datasets.yaml, then REGISTRY)
SOURCE_LINE = {line[:-1]: number + 1 for number, line in
               enumerate(((ROOT / "configs" / "datasets.yaml").read_text() + REGISTRY).splitlines(), start=1)
               if line.startswith("bad_")}


def write_rows(path: Path, rows: list) -> None:
    """Rows in the file's format; a str row is written as that raw line (JSON Lines only)."""
    if path.suffix == ".jsonl":
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    else:  # CSV: one line per row (a newline inside a cell would make the spreadsheet line ambiguous)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: (v.replace("\n", " ") if isinstance(v, str) else v) for k, v in row.items()}
                          for row in rows])
        path.write_text(out.getvalue())


def params_for(params_text: str, entry: str, on_bad_row: str = "error") -> str:
    params = edit(params_text, "    sft: 1500 ", "    sft: 3 ")
    params = edit(params, "    grpo: 128 ", "    grpo: 1 ")
    params = edit(params, "    eval: 200 ", "    eval: 2 ")
    params = set_params(params, {"prepare.train": [entry, "arithmetic"]})
    return edit(params, "  on_bad_row: error ", f"  on_bad_row: {on_bad_row} ")


def workspace(tmp_path: Path, params: str) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "datasets.yaml").write_text((ROOT / "configs" / "datasets.yaml").read_text() + REGISTRY)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(params)
    return tmp_path


def outs(work: Path) -> dict:
    return tree(work / "data" / "prepared") | {"metrics": (work / "metrics" / "prepare.json").read_bytes()}


def error_line(stderr: str) -> str:
    """The one `error: ` line (a CSV source also shows `datasets`' progress bar on stderr)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def prepare_ok(work: Path) -> dict:
    code, _, stderr = run_in_process("prepare", work)
    assert code == 0, stderr
    return json.loads((work / "metrics" / "prepare.json").read_text())


@dataclass
class RowCase:
    kind: str  # the reason counted under prepare.on_bad_row: skip
    row: dict | str | int  # the bad row (a str: a raw JSON Lines line; an int: a JSON list item)
    fragment: str  # what the message says about it
    formats: tuple[str, ...] = ("jsonl", "json", "csv")
    entry: str = ""  # another converter's entry (its own good rows), instead of the format sweep


GOOD_SQUAD = {"question": "Where?", "context": "In Paris.", "answers": {"text": ["Paris"]}}
GOOD_GENERIC = {"question": "What is 2 + 2?", "answer": "4"}
GOOD_ARITHMETIC = {"question": "Start with 2. Add 3.", "steps": ["2 + 3 = 5."], "answer": "5"}
GOOD_BY_ENTRY = {"bad_squad": ([GOOD_SQUAD, {**GOOD_SQUAD, "question": "Which city?"}], "squad_v2"),
                 "bad_generic": ([GOOD_GENERIC, {**GOOD_GENERIC, "question": "What is 3 + 3?"}], "generic"),
                 "bad_arithmetic": ([GOOD_ARITHMETIC, {**GOOD_ARITHMETIC, "question": "Start with 2. Add 4.",
                                                       "steps": ["2 + 4 = 6."], "answer": "6"}], "arithmetic")}

ROW_CASES = [
    RowCase("malformed_row", '{"question": "oops", ', "malformed JSON (Expecting property name enclosed in double "
            "quotes at column 22)", formats=("jsonl",)),
    # the decoder's "Unterminated string starting at" is followed by our column, not a second "at"
    RowCase("malformed_row", '{"question": "oops', "malformed JSON (Unterminated string starting at column 14)",
            formats=("jsonl",)),
    RowCase("malformed_row", "[1, 2]", "expected a JSON object, got list", formats=("jsonl",)),
    RowCase("malformed_row", 5, "expected a JSON object, got int", formats=("json",)),
    RowCase("missing_column", {"question": "No answer here", "answer": None}, "missing column 'answer'"),
    RowCase("no_final_answer", {"question": "No total?", "answer": "It is 5."},
            "answer has no final '#### <number>' line"),
    RowCase("answer_not_a_number", {"id": "q-77", "question": "Which?", "answer": "It is blue.\n#### blue"},
            "final answer 'blue' is not a number"),
    RowCase("answer_not_a_number", {"id": "q-78", "question": "How much?", "answer": "Add.\n####"},
            "final answer '' is not a number"),
    RowCase("no_solution_steps", {"question": "Just the total?", "answer": "#### 4"},
            "answer has no solution steps before '####'"),
    RowCase("bad_answers", {"question": "Who?", "context": "Nobody.", "answers": "Nobody"},
            "answers must be a mapping with a 'text' list, got 'Nobody'", entry="bad_squad"),
    RowCase("empty_answer", {"question": "Who?", "context": "Nobody.", "answers": {"text": ["  "]}},
            "answers.text[0] is empty", entry="bad_squad"),
    RowCase("missing_column", {"question": "Who?", "answers": {"text": ["x"]}}, "missing column 'context'",
            entry="bad_squad"),
    RowCase("empty_answer", {"question": "What is 5 + 5?", "answer": " . "}, "empty answer", entry="bad_generic"),
    RowCase("wrong_chain", {"question": "Start with 2. Add 2.", "steps": ["2 + 2 = 5."], "answer": "5"},
            "step 1 '2 + 2 = 5.' is wrong arithmetic", entry="bad_arithmetic"),
]


def _row_params():
    for case in ROW_CASES:
        for fmt in ([None] if case.entry else case.formats):
            label = case.entry.removeprefix("bad_") if case.entry else fmt
            yield pytest.param(case, fmt, id=f"{case.kind}-{label}-{re.sub(r'[^a-z0-9]+', '_', case.fragment)[:24]}")


def test_the_catalogue_names_every_reason_a_converter_refuses_a_row():
    source = (ROOT / "llmhalluc" / "datasets" / "converters.py").read_text()
    kinds = set(re.findall(r'BadRow\(\s*"(\w+)"', source)) | {"malformed_row"}  # malformed_row: the reader's
    assert kinds == {case.kind for case in ROW_CASES}


@pytest.mark.parametrize(("case", "fmt"), list(_row_params()))
def test_bad_row_exits_3_naming_its_location_and_leaves_outs(tmp_path: Path, params_text: str, case: RowCase, fmt):
    if case.entry:
        good, converter = GOOD_BY_ENTRY[case.entry]
        entry, path = case.entry, Path(f"data/raw/rows_{case.entry.removeprefix('bad_')}.jsonl")
    else:
        good, converter = GOOD, FORMATS[fmt]
        entry, path = f"bad_{fmt}", Path(f"data/raw/rows.{fmt}")
    params = params_for(params_text, entry)
    work = workspace(tmp_path, params)
    write_rows(work / path, good)
    prepare_ok(work)
    before = outs(work)

    write_rows(work / path, [good[0], case.row, good[1]])
    code, stdout, stderr = run_in_process("prepare", work)

    where = {".jsonl": f"{path}:2", ".json": f"{path}[1]", ".csv": f"{path}:3"}[path.suffix]
    assert code == 3, stderr
    assert error_line(stderr).startswith(f"error: {where}: {case.fragment}"), stderr
    assert f"(converter {converter}, registry entry {entry}" in stderr
    if isinstance(case.row, dict) and case.row.get("id"):
        assert f"record {case.row['id']}" in stderr
    assert "fix the row or set prepare.on_bad_row: skip" in stderr and "Traceback" not in stderr
    assert stdout == ""
    assert outs(work) == before and stray_staging(work) == []

    (work / "params.yaml").write_text(params_for(params_text, entry, on_bad_row="skip"))
    stats = prepare_ok(work)
    assert stats["dropped"] == {"total": 1, f"{entry}/{case.kind}": 1}


SOURCE_CASES = [
    # (id, file name, content, expected message after `error: `)
    ("empty-jsonl", "rows.jsonl", "\n\n", "data/raw/rows.jsonl: empty source (registry entry bad_jsonl"),
    ("empty-json", "rows.json", "[]", "data/raw/rows.json: empty source (registry entry bad_json"),
    ("empty-csv-header-only", "rows.csv", "question,answer\n", "data/raw/rows.csv: empty source (registry entry "
     "bad_csv"),
    ("column-missing-jsonl", "rows.jsonl", '{"problem": "1+1?", "answer": "1 + 1 = 2.\\n#### 2"}\n',
     "data/raw/rows.jsonl: missing column 'question' that converter gsm8k needs (columns: answer, problem); "
     "map it with `columns: {question: <column>}` in configs/datasets.yaml:"),
    ("column-missing-json", "rows.json", '[{"question": "1+1?", "solution": "#### 2"}]',
     "data/raw/rows.json: missing column 'answer' that converter gsm8k needs (columns: question, solution)"),
    ("column-missing-csv", "rows.csv", "question,total\n1+1?,2\n",
     "data/raw/rows.csv: missing column 'answer' that converter gsm8k needs (columns: question, total)"),
    ("not-found", None, None, "data/raw/rows.jsonl: source file not found (registry entry bad_jsonl, "
     f"configs/datasets.yaml:{SOURCE_LINE['bad_jsonl']}: bad_jsonl.source.path)"),
    ("json-not-a-list", "rows.json", '{"question": "1+1?"}', "data/raw/rows.json: expected a JSON list of "
     "objects, got dict"),
    ("json-malformed", "rows.json", '[\n{"question": "1+1?",\n', "data/raw/rows.json:3: malformed JSON (Expecting "
     "property name enclosed in double quotes at column 1)"),
    ("csv-ragged", "rows.csv", "question,answer\nOne?,1 + 0 = 1. #### 1\nTwo?,1 + 1 = 2. #### 2,extra\n",
     "data/raw/rows.csv: cannot load (ParserError: Error tokenizing data. C error: Expected 2 fields in line 3, "
     "saw 3)"),
]


@pytest.mark.parametrize(("name", "content", "message"), [c[1:] for c in SOURCE_CASES],
                         ids=[c[0] for c in SOURCE_CASES])
def test_bad_source_exits_3_whatever_on_bad_row_says(tmp_path: Path, params_text: str, name, content, message):
    fmt = (name or "rows.jsonl").rpartition(".")[2]
    entry = f"bad_{fmt}"
    work = workspace(tmp_path, params_for(params_text, entry))
    write_rows(work / "data" / "raw" / f"rows.{fmt}", GOOD)
    prepare_ok(work)
    before = outs(work)
    path = work / "data" / "raw" / f"rows.{fmt}"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    for on_bad_row in ("error", "skip"):
        (work / "params.yaml").write_text(params_for(params_text, entry, on_bad_row))
        code, stdout, stderr = run_in_process("prepare", work)
        assert code == 3, stderr
        assert error_line(stderr).startswith(f"error: {message}"), stderr
        assert "Traceback" not in stderr and stdout == ""
        assert outs(work) == before and stray_staging(work) == []


def test_a_source_whose_every_row_is_skipped_is_an_error(tmp_path: Path, params_text: str):
    """on_bad_row: skip never turns a wholly bad source into silently missing data."""
    work = workspace(tmp_path, params_for(params_text, "bad_jsonl"))
    write_rows(work / "data" / "raw" / "rows.jsonl", GOOD)
    prepare_ok(work)
    before = outs(work)
    write_rows(work / "data" / "raw" / "rows.jsonl", [{"question": "No total?", "answer": "It is 5."}, "[1]"])
    (work / "params.yaml").write_text(params_for(params_text, "bad_jsonl", "skip"))
    code, _, stderr = run_in_process("prepare", work)
    assert code == 3, stderr
    assert error_line(stderr) == ("error: data/raw/rows.jsonl: every row was dropped (registry entry bad_jsonl); "
                                  "see the reasons with prepare.on_bad_row: error")
    assert outs(work) == before and stray_staging(work) == []


def test_a_bad_row_stops_prepare_as_its_own_process(tmp_path: Path, params_text: str):
    """The same path as the in-process cases, with the exit code a shell (and DVC) sees."""
    work = workspace(tmp_path, params_for(params_text, "bad_csv"))
    write_rows(work / "data" / "raw" / "rows.csv", GOOD)
    prepare_ok(work)
    before = outs(work)
    write_rows(work / "data" / "raw" / "rows.csv", [GOOD[0], {"question": "No total?", "answer": "It is 5."}])
    result = run_stage_script("prepare", work)
    assert result.returncode == 3, result.stderr
    assert error_line(result.stderr) == ("error: data/raw/rows.csv:3: answer has no final '#### <number>' line "
                                         "(converter gsm8k, registry entry bad_csv); fix the row or set "
                                         "prepare.on_bad_row: skip")
    assert outs(work) == before


# --- prepared data read by the later stages ------------------------------------------------------------------

PREPARED_FAULTS = [
    # (id, how the second line of the file is spoiled, message after `<file>:<line>: ` or `<file>: `)
    ("truncated", lambda line: line[: len(line) // 2], "not a prepared record (Unterminated string"),
    ("not-json", lambda line: "<<<<<<< HEAD", "not a prepared record (Expecting value"),
    ("not-an-object", lambda line: "[1, 2]", "not a prepared record (expected a JSON object, got list)"),
    ("missing-field", lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "answer"}),
     "not a prepared record (Record.__init__() missing 1 required positional argument: 'answer')"),
    ("unknown-field", lambda line: json.dumps({**json.loads(line), "hint": "x"}),
     "not a prepared record (Record.__init__() got an unexpected keyword argument 'hint')"),
    ("steps-not-a-list", lambda line: json.dumps({**json.loads(line), "steps": "2 + 2 = 4."}),
     "not a prepared record (steps must be a list of strings, got '2 + 2 = 4.')"),
    ("answer-not-a-string", lambda line: json.dumps({**json.loads(line), "answer": 4}),
     "not a prepared record (answer must be a string, got 4)"),
    ("bad-error-entry", lambda line: json.dumps({**json.loads(line), "errors": [{"step": "one", "text": "x"}]}),
     "not a prepared record (errors entries need an integer step and a text"),
    ("bad-prompt", lambda line: json.dumps({**json.loads(line), "prompt": "Solve it"}),
     "not a prepared record (prompt must be a list of {role, content} messages"),
]


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory: pytest.TempPathFactory, params_text_module: str) -> Path:
    """data/prepared from one real prepare run, shared by the cases below (each copies it)."""
    work = tmp_path_factory.mktemp("prepared")
    shutil.copytree(ROOT / "configs", work / "configs")
    params = edit(params_text_module, "    sft: 1500 ", "    sft: 4 ")
    params = edit(params, "    grpo: 128 ", "    grpo: 2 ")
    (work / "params.yaml").write_text(edit(params, "    eval: 200 ", "    eval: 2 "))
    code, _, stderr = run_in_process("prepare", work)
    assert code == 0, stderr
    return work / "data" / "prepared"


@pytest.fixture(scope="module")
def params_text_module() -> str:
    return (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize(("name", "spoil", "message"), PREPARED_FAULTS, ids=[c[0] for c in PREPARED_FAULTS])
def test_spoiled_prepared_line_is_refused_by_read_jsonl(tmp_path: Path, prepared_data: Path, name, spoil, message):
    from llmhalluc.datasets.records import read_jsonl
    from llmhalluc.errors import DataError

    lines = (prepared_data / "sft.jsonl").read_text().splitlines()
    assert len(read_jsonl(prepared_data / "sft.jsonl")) == len(lines)  # the unspoiled file reads
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([lines[0], spoil(lines[1]), *lines[2:]]) + "\n")
    with pytest.raises(DataError) as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:2: {message}"), str(caught.value)
    assert str(caught.value).endswith("run `dvc repro prepare`")


@pytest.mark.parametrize(("content", "message"), [
    (b"", "no records (prepare never writes an empty set)"),
    (b"\n\n", "no records (prepare never writes an empty set)"),
    (b"\xff\xfe{}", "cannot read prepared data (not UTF-8 text: invalid start byte)"),
], ids=["empty", "blank-lines", "not-utf8"])
def test_empty_or_binary_prepared_file_is_refused(tmp_path: Path, content: bytes, message: str):
    from llmhalluc.datasets.records import read_jsonl
    from llmhalluc.errors import DataError

    path = tmp_path / "eval.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        read_jsonl(path)


@pytest.mark.parametrize(("section", "script", "file"), [("sft", "train_sft", "sft.jsonl"),
                                                         ("grpo", "train_grpo", "grpo.jsonl"),
                                                         ("eval", "eval", "eval.jsonl")])
def test_later_stage_exits_3_on_truncated_prepared_data_before_loading_a_model(
    tmp_path: Path, prepared_data: Path, params_text_module: str, section: str, script: str, file: str
):
    """A half-written file (e.g. a copy cut short) stops the stage at its first read, naming file:line.

    The upstream model folders are empty markers: a stage that reached loading a
    model would fail differently, so exit 3 with this message proves it stopped first.
    """
    work = tmp_path
    shutil.copytree(prepared_data, work / "data" / "prepared")
    data = work / "data" / "prepared" / file
    first, second = data.read_text().splitlines()[:2]
    data.write_text(f"{first}\n{second[: len(second) // 2]}")  # cut short mid-record in line 2
    for folder in ("models/sft", "models/merged"):
        (work / folder).mkdir(parents=True)
    (work / "params.yaml").write_text(params_text_module)
    before = tree(work)

    code, stdout, stderr = run_in_process(script, work)

    assert code == 3, stderr
    assert f"error: data/prepared/{file}:2: not a prepared record (" in stderr, stderr
    assert "run `dvc repro prepare`" in stderr and "Traceback" not in stderr
    assert stdout == ""
    assert tree(work) == before
