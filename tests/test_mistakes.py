"""The ladder of wrong steps (llmhalluc.datasets.mistakes), the step's own check (step_check), where prepare
puts the errors (placement), and what prepare records of them for the model's lineage.

Each kind is checked for the property that places it on the ladder: random text is no step, a lookup error
has consistent arithmetic from a wrong operand, a near miss has a wrong result from the right operands.
"""

from __future__ import annotations

import json
import random
import typing
from pathlib import Path

import pytest

from llmhalluc.datasets import arithmetic
from llmhalluc.datasets.augment import add_errors
from llmhalluc.datasets.converters import CONVERTERS, Context
from llmhalluc.datasets.mistakes import KINDS, nudge_number, wrong_step
from llmhalluc.datasets.step_check import check_value_span, has_check, strip_check, with_check
from llmhalluc.params.sections import ArithmeticParams, BacktrackAugmentParams, ErrorKind, ProbeKind
from tests.conftest import edit
from tests.test_prepare import prepared, run_ok, small, workspace


def test_the_registry_and_the_params_name_the_same_kinds():
    assert set(KINDS) == set(typing.get_args(ErrorKind))
    assert set(typing.get_args(ProbeKind)) == {"trained", *KINDS}


def _records(n: int = 60):
    stream = arithmetic.generate(ArithmeticParams(max_steps=3, max_operand=20), random.Random(1))
    ctx = Context(entry="arithmetic", columns={}, prompt="{question}", abstain_answer="unanswerable")
    return [CONVERTERS["arithmetic"](next(stream), i, ctx) for i in range(n)]


def test_a_near_miss_keeps_the_operands_and_gets_the_result_wrong():
    rng = random.Random(0)
    for record in _records():
        for step in record.steps:
            wrong = wrong_step("plausible", step, rng)
            assert wrong.split(" = ")[0] == step.split(" = ")[0]
            assert arithmetic.check_step(wrong) is False


def test_a_lookup_error_is_consistent_arithmetic_from_a_wrong_operand():
    rng = random.Random(0)
    for record in _records():
        for step in record.steps:
            wrong = wrong_step("lookup", step, rng)
            assert wrong != step and arithmetic.check_step(wrong) is True  # the calculation itself holds
            left, right = (int(n) for n in wrong.split(" = ")[0].split(" ")[::2])
            gold_left, gold_right = (int(n) for n in step.split(" = ")[0].split(" ")[::2])
            assert (left != gold_left) != (right != gold_right)  # exactly one operand is not the one to copy
            assert int(wrong.split(" = ")[1].rstrip(".")) >= 0  # no negative result where the task has none
        answer = record.answer_sentence()
        assert wrong_step("lookup", answer, rng) != answer  # an answer that is not the last result


def test_random_text_is_no_step_and_every_kind_is_seeded():
    for kind in KINDS:
        first = [wrong_step(kind, s, random.Random(7)) for s in ("3 + 4 = 7.", "The answer is 7.")]
        again = [wrong_step(kind, s, random.Random(7)) for s in ("3 + 4 = 7.", "The answer is 7.")]
        assert first == again
    assert arithmetic.check_step(wrong_step("random", "3 + 4 = 7.", random.Random(0))) is None
    assert wrong_step("plausible", "She read the book.", random.Random(0)) is None  # nothing to nudge
    with pytest.raises(ValueError, match="plausible, lookup, random"):
        wrong_step("typo", "3 + 4 = 7.", random.Random(0))


@pytest.mark.parametrize(("step", "checked"), [
    ("7 + 3 = 10.", "7 + 3 = 10 (check: 7 + 3 = 10)."),
    ("7 + 3 = 11.", "7 + 3 = 11 (check: 7 + 3 = 10)."),            # a wrong result gets the right value
    ("She sold 48/2 = 24 clips.", "She sold 48/2 = 24 clips (check: 48/2 = 24)."),
    ("Each gets 10/3 = 3.33 apples.", "Each gets 10/3 = 3.33 apples (check: 10/3 = 3.33)."),
    ("He pays $1,200 + $300 = $1,600.", "He pays $1,200 + $300 = $1,600 (check: $1,200 + $300 = $1,500)."),
    ("2 + 3 + 4 = 9.", "2 + 3 + 4 = 9."),                              # a chain: nothing to recompute as a op b
    ("The answer is 10.", "The answer is 10."),
])
def test_a_check_recomputes_the_steps_own_operands(step, checked):
    assert with_check(step) == checked
    assert with_check(checked) == checked and strip_check(checked) == step  # idempotent, and it comes off
    assert has_check(checked) == (checked != step)


def test_a_mistake_in_a_checked_step_keeps_a_check_of_its_own_operands():
    checked = with_check("7 + 3 = 10.")
    near = wrong_step("plausible", checked, random.Random(0))
    assert near.endswith("(check: 7 + 3 = 10).") and near != checked  # the visible mismatch
    lookup = wrong_step("lookup", checked, random.Random(0))
    assert has_check(lookup) and arithmetic.check_step(lookup) is True  # consistent: its check agrees
    start, end = check_value_span(near)
    assert near[start:end] == "10"
    assert not has_check(wrong_step("random", checked, random.Random(0)))


def test_boundary_placement_is_independent_of_position_and_of_earlier_errors():
    records = _records(3000)
    add_errors(records, BacktrackAugmentParams(error_rate=0.3, placement="boundary", error_kind="plausible"),
               random.Random(0))
    slots = [(r, i) for r in records for i in range(len(r.segments()))]
    hit = {(id(r), e.step) for r in records for e in r.errors}
    share = len(hit) / len(slots)
    assert 0.28 < share < 0.32
    assert any(not r.errors for r in records) and any(len(r.errors) >= 2 for r in records)
    # an error at the first boundary does not change the chance of one at the second
    two = [r for r in records if len(r.segments()) >= 3]
    after_hit = [(id(r), 1) in hit for r in two if (id(r), 0) in hit]
    after_miss = [(id(r), 1) in hit for r in two if (id(r), 0) not in hit]
    assert abs(sum(after_hit) / len(after_hit) - sum(after_miss) / len(after_miss)) < 0.06
    for position in range(3):  # and every boundary is as likely as the others
        at = [(id(r), position) in hit for r in two]
        assert 0.25 < sum(at) / len(at) < 0.35


def test_example_placement_is_unchanged_by_the_ladder():
    """The default placement and kind draw exactly as before the ladder existed: same rng calls, same errors."""
    records = _records(200)
    add_errors(records, BacktrackAugmentParams(error_rate=0.5, errors_per_example=1, error_kind="plausible"),
               random.Random(4))
    rng = random.Random(4)
    for record in _records(200):
        if rng.random() >= 0.5:
            continue
        segments = record.segments()
        index = rng.randrange(len(segments))
        expected = nudge_number(segments[index], rng)
        assert next(r for r in records if r.id == record.id).errors[0].text == expected


def test_prepare_checks_every_set_and_records_the_mistakes(tmp_path: Path, params_text: str):
    params = small(params_text, sft=80)
    params = edit(params, "  check_steps: false ", "  check_steps: true ")
    params = edit(params, "    error_rate: 0.0 ", "    error_rate: 0.5 ")
    params = edit(params, "    error_kind: plausible ", "    error_kind: lookup ")
    work = workspace(tmp_path, params)
    run_ok(work)
    for name in ("sft", "grpo", "eval"):
        assert all(has_check(step) for r in prepared(work, name) for step in r["steps"])
    errors = [e for r in prepared(work, "sft") for e in r["errors"]]
    steps = [e for e in errors if "check:" in e["text"]]
    assert steps and all(arithmetic.check_step(e["text"]) is True for e in steps)  # lookup errors are consistent
    meta = json.loads((work / "data" / "prepared" / "meta.json").read_text())
    assert meta["mistakes"] == {"kind": "lookup", "rate": 0.5, "placement": "example", "per_example": 1,
                                "check_steps": True}


def test_boundary_placement_with_several_errors_per_example_is_a_params_error(tmp_path: Path, params_text: str):
    from tests.conftest import run_stage_script

    params = edit(params_text, "    placement: example ", "    placement: boundary ")
    params = edit(params, "    errors_per_example: 1 ", "    errors_per_example: 2 ")
    work = workspace(tmp_path, params)
    result = run_stage_script("prepare", work)
    assert result.returncode == 2
    assert "prepare.backtrack.errors_per_example" in result.stderr and "placement: boundary" in result.stderr
