"""Diagnostics on hand-built cases whose right values are known: statistics against their closed forms,
step checking, and the probe / own errors / sampled eval on scripted models whose behaviour is fixed by hand
(one that retracts exactly its wrong steps, one that never backtracks, one that always does)."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmhalluc import diagnostics, evaluation
from llmhalluc.answers import DEFAULT_PATTERN
from llmhalluc.backtrack.retraction import resolve_ids
from llmhalluc.datasets.arithmetic import check_step
from llmhalluc.datasets.records import Record, chat_prompt
from llmhalluc.params.sections import EvalParams, OwnErrorsParams, ProbeParams, SampledParams
from tests.cache_reads import CacheReads

BT = "<|backtrack|>"

# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(("positives", "negatives", "expected"), [
    ([0.9, 0.8], [0.1, 0.2], 1.0),          # separated
    ([0.1, 0.2], [0.9, 0.8], 0.0),          # separated the wrong way
    ([0.3, 0.3], [0.3, 0.3, 0.3], 0.5),     # one value for all: no separation
    ([0.0] * 4, [0.0] * 4, 0.5),            # a model that never backtracks
    ([0.2, 0.8], [0.5], 0.5),               # one pair won, one lost
    ([0.5, 0.9], [0.5, 0.1], 0.875),        # (1 tie + 3 wins) / 4 pairs = (0.5 + 3) / 4
])
def test_auroc_counts_pairs_and_ties_half(positives, negatives, expected):
    assert diagnostics.auroc(positives, negatives) == expected
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    assert expected == brute / (len(positives) * len(negatives))


def test_auroc_without_one_side_is_undefined():
    assert diagnostics.auroc([], [0.1]) is None and diagnostics.auroc([0.1], []) is None


def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_right_one():
    """The unbiased estimator against the closed form counted out: every k-subset of n samples."""
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([i < c for i in range(n)], k))
                assert diagnostics.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert diagnostics.pass_at_k(4, 1, 1) == 0.25 and diagnostics.pass_at_k(4, 1, 4) == 1.0
    assert diagnostics.pass_at_k(10, 3, 2) == pytest.approx(1 - math.comb(7, 2) / math.comb(10, 2))
    with pytest.raises(ValueError):
        diagnostics.pass_at_k(2, 1, 3)


def test_majority_ignores_no_answer_and_breaks_ties_by_first_seen():
    assert diagnostics.majority(["3", None, "4", "4"]) == "4"
    assert diagnostics.majority(["5", "3", "3", "5"]) == "5"
    assert diagnostics.majority([None, None]) is None


def _sample(id_: str, sample: int, answer: str | None, gold: str, backtracks: int = 0, corrected: bool = False,
            broken: bool = False) -> dict:
    return {"id": id_, "sample": sample, "answer": answer, "gold": gold, "correct": answer == gold,
            "backtracks": backtracks, "corrected": corrected, "broken": broken}


def test_sampled_metrics_on_hand_counted_samples():
    rows = [  # problem a: 1 of 4 right; problem b: 3 of 4 right; problem c: none right
        _sample("a", 0, "1", "7"), _sample("a", 1, "7", "7", backtracks=2, corrected=True),
        _sample("a", 2, "1", "7"), _sample("a", 3, None, "7"),
        _sample("b", 0, "5", "5"), _sample("b", 1, "6", "5", backtracks=1, broken=True),
        _sample("b", 2, "5", "5"), _sample("b", 3, "5", "5"),
        _sample("c", 3, "9", "2"), _sample("c", 0, "8", "2"), _sample("c", 1, "9", "2"), _sample("c", 2, "9", "2"),
    ]
    metrics = diagnostics.summarize_samples(rows, [1, 2, 4])
    assert metrics["samples"] == 12 and metrics["problems"] == 3
    assert metrics["accuracy"] == round(4 / 12, 6)
    assert metrics["pass@1"] == round((1 / 4 + 3 / 4 + 0) / 3, 6)
    assert metrics["pass@2"] == round(((1 - 3 / 6) + 1.0 + 0) / 3, 6)  # a: 1 - C(3,2)/C(4,2); b: any pair has one
    assert metrics["pass@4"] == round(2 / 3, 6)
    # maj@1: first samples a "1" (wrong), b "5" (right), c "8" (wrong); maj@2: a "1" vs "7" tie -> "1",
    # b "5" vs "6" -> "5"; maj@4: a "1" twice, b "5", c "9".
    assert (metrics["maj@1"], metrics["maj@2"], metrics["maj@4"]) == (round(1 / 3, 6), round(1 / 3, 6),
                                                                       round(1 / 3, 6))
    assert metrics["backtrack_rate_right"] == 0.25 and metrics["backtrack_rate_wrong"] == 0.125
    assert (metrics["corrected"], metrics["broken"]) == (1, 1)


def test_transitions_count_each_way_by_id():
    before = [{"id": i, "correct": c} for i, c in zip("abcde", [True, True, False, False, False], strict=True)]
    after = [{"id": i, "correct": c} for i, c in zip("edcba", [True, False, True, False, True], strict=True)]
    # a: right->right, b: right->wrong, c: wrong->right, d: wrong->wrong, e: wrong->right
    assert diagnostics.transitions(before, after) == {
        "examples": 5, "wrong_to_right": 2, "right_to_wrong": 1, "right_to_right": 1, "wrong_to_wrong": 1,
        "wrong_to_right_rate": round(2 / 3, 6), "right_to_wrong_rate": 0.5,
    }
    assert list(diagnostics.transitions_between({"sft": before, "grpo": after, "base": before})) == [
        "sft->grpo", "grpo->base"]


# --------------------------------------------------------------------------- step checking


@pytest.mark.parametrize(("step", "verdict"), [
    ("3 + 4 = 7.", True), ("3 + 4 = 8.", False), ("7 - 9 = -2.", True), ("9 - 2 = 5.", False),
    ("Priya baked 36/2 = 18 muffins on Tuesday.", True),        # GSM8K-style, after prepare strips <<36/2=18>>
    ("She makes $1,200 * 2 = $2,400 a month.", True), ("It takes 6 * 7 = 41 minutes.", False),
    ("Each gets 10/3 = 3.33 apples.", True), ("Each gets 10/3 = 3.4 apples.", False), ("5 x 3 = 15 cups.", True),
    ("The answer is 7.", None), ("Start with 3.", None), ("2 * 3 * 4 = 24.", None),  # a chain is not `a op b`
    ("4 + 4 = 8 and 8 * 2 = 17.", False),                       # every calculation of a step must hold
])
def test_check_step_recomputes_a_op_b_equals_c(step, verdict):
    assert check_step(step) is verdict


# --------------------------------------------------------------------------- scripted models


RECORDS = [  # wrong results never equal a gold answer, so a wrong prefix cannot be right by accident
    ("Start with 10. Add 20. Add 40. What is the result?", ["10 + 20 = 30.", "30 + 40 = 70."], "70"),
    ("Start with 5. Add 3. What is the result?", ["5 + 3 = 8."], "8"),
    ("Start with 60. Subtract 20. Add 30. What is the result?", ["60 - 20 = 40.", "40 + 30 = 70."], "70"),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from llmhalluc.tiny_model import build_tiny_model

    corpus = [f"{q} {' '.join(s)} The answer is {a}." for q, s, a in RECORDS] * 4 + [
        f"{a} + {b} = {a + b}." for a in range(0, 80, 5) for b in range(0, 40, 5)]
    folder = build_tiny_model(tmp_path_factory.mktemp("scripted"), corpus, hidden_size=32, intermediate_size=64)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": [BT]})
    return tok


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return [Record(id=f"r{i}", question=q, steps=s, answer=a, prompt=chat_prompt(q, "Solve the problem."))
            for i, (q, s, a) in enumerate(RECORDS)]


class Scripted:
    """A stand-in causal LM whose next token is a rule over the ids so far (logit 30 on it, 0 elsewhere).

    It knows each prompt's gold solution T, tokenized the way SFT sees it, and
      perfect: follows T; when the resolved text leaves T, backtracks until it is back on T at a step
               boundary (so it retracts exactly the wrong step's tokens), then writes the right step;
      never:   follows T while on it, else ends; the backtrack logit is -inf;
      always:  as perfect, but also backtracks after every right step;
      erring:  first writes a near miss of step 0 and its exact retraction (script), then as perfect.
      derailed: as never, but with a backtrack anywhere in what it has written it ends at once (the
               retracted tokens left in context break it; from a clean context it is right).
    """

    def __init__(self, tokenizer, records: list[Record], mode: str) -> None:
        import torch
        from transformers import GenerationConfig

        self.mode = mode
        self.bt = tokenizer.convert_tokens_to_ids(BT)
        self.eos = tokenizer.eos_token_id
        self.vocab = len(tokenizer)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(eos_token_id=self.eos)
        self.reads = CacheReads()  # the ids read through each cache so far
        self.plans = {}
        for r in records:
            segments = [tokenizer.encode((" " if i else "") + s, add_special_tokens=False)
                        for i, s in enumerate(r.segments())]
            target = [t for s in segments for t in s]
            boundaries = {sum(len(s) for s in segments[:i]) for i in range(len(segments) + 1)}
            wrong = tokenizer.encode(r.steps[0][:-2] + "9.", add_special_tokens=False)  # "... = 30." -> "... = 39."
            script = wrong + [self.bt] * len(wrong) + target
            self.plans[tuple(evaluation.prompt_ids(tokenizer, r.prompt))] = (target, boundaries, script)

    def parameters(self):
        return iter([self.anchor])

    def next_id(self, ids: list[int]) -> int:
        prompt = next((p for p in self.plans if tuple(ids[:len(p)]) == p), None)
        if prompt is None:  # inside the prompt: a position whose logits a batch computes and nobody reads
            return self.eos
        target, boundaries, script = self.plans[prompt]
        written = ids[len(prompt):]
        if self.mode == "erring" and written == script[:len(written)]:
            return script[len(written)] if len(written) < len(script) else self.eos
        resolved = resolve_ids(written, self.bt)
        on_track = resolved == target[:len(resolved)]
        if self.mode == "derailed" and self.bt in written:
            return self.eos
        if self.mode in ("never", "derailed"):
            return target[len(resolved)] if on_track and len(resolved) < len(target) else self.eos
        if self.mode == "positional":  # writes the gold token of each position, whatever was written before it
            return target[len(resolved)] if len(resolved) < len(target) else self.eos
        if not on_track or (written and written[-1] == self.bt and len(resolved) not in boundaries):
            return self.bt
        if self.mode == "always" and written and written[-1] != self.bt and 0 < len(resolved) < len(target) \
                and len(resolved) in boundaries:
            return self.bt
        return target[len(resolved)] if len(resolved) < len(target) else self.eos

    def _logits(self, ids: list[int]):
        import torch

        row = torch.zeros(self.vocab)
        row[self.next_id(ids)] = 30.0
        if self.mode in ("never", "derailed", "positional"):
            row[self.bt] = float("-inf")
        return row

    def __call__(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0,
                 output_hidden_states=False, cache=None, **_):
        """Logits as the rule says; the hidden state is the rule's intent, one-hot on next_id before any mask
        (so `never` knows a step is wrong, it ends there, and still never says backtrack). With a cache, as
        decoding.prime drives it: the ids read before are the cache's (tests/cache_reads.py follows its batch
        operations), padding is masked wherever it stands."""
        import torch

        rows = input_ids.shape[0]
        full, _ = self.reads.extend(cache, input_ids, masked=attention_mask is not None)
        mask = attention_mask if attention_mask is not None else torch.ones_like(full)
        width, new = full.shape[1], input_ids.shape[1]
        keep = logits_to_keep or new
        logits = torch.zeros(rows, keep, self.vocab)
        hidden = torch.zeros(rows, new, self.vocab)
        for b in range(rows):
            for column in range(width - keep, width):
                if mask[b, column]:
                    ids = full[b, :column + 1][mask[b, :column + 1].bool()].tolist()
                    logits[b, column - (width - keep)] = self._logits(ids)
                    hidden[b, column - (width - new), self.next_id(ids)] = 1.0
        return SimpleNamespace(logits=logits, hidden_states=(hidden,) if output_hidden_states else None)

    forward = __call__


def _params(**sections) -> EvalParams:
    return EvalParams(batch_size=2, max_new_tokens=80, probe=sections.get("probe", ProbeParams(problems=3)),
                      own_errors=sections.get("own_errors", OwnErrorsParams()),
                      sampled=sections.get("sampled", SampledParams(n=2, problems=3, k=[1, 2])))


def _diagnose(tokenizer, records, mode: str, **sections) -> diagnostics.Diagnosis:
    model = Scripted(tokenizer, records, mode)

    def score(ids, record):
        return evaluation.score(ids, gold=record.answer, answerable=True, tokenizer=tokenizer, backtrack_id=model.bt,
                                pattern=DEFAULT_PATTERN, abstain="unanswerable")

    return diagnostics.diagnose(model, tokenizer, records, backtrack_id=model.bt, p=_params(**sections), score=score)


def test_a_model_that_retracts_exactly_its_wrong_steps_scores_full_marks(tokenizer, records):
    diagnosis = _diagnose(tokenizer, records, "perfect")
    assert diagnosis.metrics["probe"] == {"plausible": {  # the kind it was trained on: plausible by default
        "items": 5,  # 2 + 1 + 2 steps
        "detection_p_wrong": 1.0, "detection_p_right": 0.0, "detection_auroc": 1.0, "detection_surprise_auroc": 1.0,
        "detection_hidden_auroc": 1.0,
        "counting_exact": 1.0, "repair_step": 1.0, "repair_step_resolved": 1.0, "repair_answer": 1.0,
        "correction_backtracked": 1.0, "correction_right": 1.0, "false_positive": 0.0,
        "correction_rollback_backtracked": 1.0, "correction_rollback_right": 1.0, "false_positive_rollback": 0.0,
    }}
    row = diagnosis.probe_rows[0]
    assert (row["id"], row["position"], row["right_step"]) == ("r0", 0, "10 + 20 = 30.")
    assert row["wrong_step"] != row["right_step"] and check_step(row["wrong_step"]) is False
    assert row["correction"].count(BT) == row["error_tokens"]  # greedy from the wrong prefix retracts it exactly
    sampled = diagnosis.metrics["sampled"]
    assert (sampled["accuracy"], sampled["pass@2"], sampled["maj@2"], sampled["backtrack_rate_right"]) == (
        1.0, 1.0, 1.0, 0.0)


def test_a_model_that_never_backtracks(tokenizer, records):
    probe = _diagnose(tokenizer, records, "never").metrics["probe"]["plausible"]
    assert (probe["detection_p_wrong"], probe["detection_p_right"], probe["detection_auroc"]) == (0.0, 0.0, 0.5)
    # ... yet it knows: it ends after a wrong step and goes on after a right one, and its state says so
    assert probe["detection_hidden_auroc"] == 1.0
    assert probe["detection_surprise_auroc"] == 1.0  # and the near miss is not what it would have written
    assert probe["counting_exact"] == 0.0  # every error has more than one token, and no second backtrack comes
    assert probe["correction_backtracked"] == 0.0 and probe["correction_right"] == 0.0
    assert probe["false_positive"] == 0.0
    assert probe["repair_step"] == 1.0 and probe["repair_answer"] == 1.0  # given the retraction, it goes on right


def test_repair_from_the_resolved_context_tells_a_derailed_model_from_one_that_cannot_write_the_step(
        tokenizer, records):
    """A model that writes every step right from a clean context, but stops once a backtrack is in its context."""
    derailed = _diagnose(tokenizer, records, "derailed", sampled=SampledParams(enabled=False),
                         own_errors=OwnErrorsParams(enabled=False))
    assert derailed.metrics["probe"]["plausible"]["repair_step"] == 0.0
    assert derailed.metrics["probe"]["plausible"]["repair_step_resolved"] == 1.0
    assert all(row["right_step"] in row["continuation_resolved"] and BT not in row["continuation_resolved"]
               for row in derailed.probe_rows)
    never = _diagnose(tokenizer, records, "never", sampled=SampledParams(enabled=False),
                      own_errors=OwnErrorsParams(enabled=False)).metrics["probe"]["plausible"]
    assert never["repair_step"] == never["repair_step_resolved"] == 1.0


def test_a_model_that_always_backtracks_has_only_false_positives(tokenizer, records):
    probe = _diagnose(tokenizer, records, "always", sampled=SampledParams(enabled=False),
                      own_errors=OwnErrorsParams(enabled=False)).metrics["probe"]["plausible"]
    assert probe["detection_auroc"] == 0.5  # the same P(backtrack) after right and wrong steps
    assert probe["detection_hidden_auroc"] == 0.5  # and the same state: it does not know either
    assert probe["false_positive"] == 1.0 and probe["correction_backtracked"] == 1.0


def test_the_probe_injects_each_kind_asked_for_and_reports_it_apart(tokenizer, records):
    from llmhalluc.diagnostics import probe_kinds

    asked = ProbeParams(problems=3, kinds=["trained", "random", "lookup", "plausible"])
    diagnosis = _diagnose(tokenizer, records, "perfect", probe=asked, sampled=SampledParams(enabled=False),
                          own_errors=OwnErrorsParams(enabled=False))
    assert list(diagnosis.metrics["probe"]) == ["plausible", "random", "lookup"]  # trained = plausible: once
    by_kind = {kind: [r for r in diagnosis.probe_rows if r["kind"] == kind] for kind in ("plausible", "random",
                                                                                         "lookup")}
    assert all(check_step(r["wrong_step"]) is False for r in by_kind["plausible"])  # a wrong result
    assert all(check_step(r["wrong_step"]) is True for r in by_kind["lookup"])  # a wrong operand, consistent
    assert all(check_step(r["wrong_step"]) is None for r in by_kind["random"])  # no step at all
    for kind, block in diagnosis.metrics["probe"].items():
        assert block["detection_auroc"] == 1.0 and block["correction_rollback_right"] == 1.0, kind
    assert probe_kinds(["trained", "random"], "random") == ["random"]


def test_a_model_trained_on_one_kind_is_probed_with_it():
    from llmhalluc.diagnostics import trained_kind

    sft = {"mistakes": {"kind": "lookup", "rate": 0.3}}
    assert trained_kind(sft) == "lookup"
    assert trained_kind({"parent": {"path": "models/sft", "lineage": sft}}) == "lookup"  # merged: from its parent
    assert trained_kind(None) == trained_kind({"stage": "train_sft"}) == "plausible"  # no record: the default


def test_the_check_diagnostic_tells_a_model_that_recomputes_from_one_that_does_not(tokenizer):
    """Checked steps: after a wrong result, does greedy write the check's right value (recompute) or not?"""
    from llmhalluc.datasets.step_check import with_check

    checked = [Record(id=f"c{i}", question=q, steps=[with_check(step) for step in s], answer=a,
                      prompt=chat_prompt(q, "Solve the problem."))
               for i, (q, s, a) in enumerate(RECORDS)]
    items = diagnostics.probe_items(tokenizer, checked, backtrack_id=tokenizer.convert_tokens_to_ids(BT), seed=0,
                                    unit="token")
    for item in items:  # the check's value, found in the ids, is the value the text shows
        start, stop = item.check_value
        assert tokenizer.decode(item.wrong[start:stop]).strip() == item.right_step.split("= ")[-1].rstrip(").")
    params = {"sampled": SampledParams(enabled=False), "own_errors": OwnErrorsParams(enabled=False)}
    recomputes = _diagnose(tokenizer, checked, "positional", **params).metrics["probe"]["plausible"]
    assert recomputes["check_recomputed"] == 1.0
    stops = _diagnose(tokenizer, checked, "never", **params).metrics["probe"]["plausible"]
    assert stops["check_recomputed"] == 0.0
    plain = _diagnose(tokenizer, [Record(id="p", question=RECORDS[1][0], steps=RECORDS[1][1], answer=RECORDS[1][2],
                                         prompt=chat_prompt(RECORDS[1][0], "Solve the problem."))],
                      "never", **params).metrics["probe"]["plausible"]
    assert "check_recomputed" not in plain  # no check, no reading


def test_own_errors_on_a_model_that_errs_then_retracts(tokenizer, records):
    diagnosis = _diagnose(tokenizer, records, "erring")
    own = diagnosis.metrics["own_errors"]
    # 3 problems x 2 samples; each sample: the near miss of step 0 (wrong, retracted), then every gold step
    # (2 + 1 + 2 of them, right); the answer sentences have nothing to recompute.
    assert own == {"samples": 6, "steps_checked": 6 + 2 * 5, "steps_wrong": 6, "p_backtrack_after_wrong": 1.0,
                   "p_backtrack_after_right": 0.0, "auroc": 1.0, "retracted_wrong": 1.0, "retracted_right": 0.0}
    sampled = diagnosis.metrics["sampled"]
    assert sampled["accuracy"] == 1.0 and sampled["backtrack_rate_right"] == 1.0
    assert sampled["corrected"] == 0  # the answer sentence was never wrong, so nothing was corrected in that sense
    first = diagnosis.sample_rows[0]
    assert [s["right"] for s in first["steps"]] == [False, True, True] and first["steps"][0]["retracted"]


def test_switches_leave_out_their_blocks(tokenizer, records):
    diagnosis = _diagnose(tokenizer, records, "perfect", probe=ProbeParams(enabled=False),
                          own_errors=OwnErrorsParams(enabled=False))
    assert list(diagnosis.metrics) == ["sampled"] and diagnosis.probe_rows == []


def test_probe_positions():
    assert diagnostics.probe_positions(3, "all") == [0, 1, 2]
    assert diagnostics.probe_positions(3, [0, -1]) == [0, 2]
    assert diagnostics.probe_positions(1, [0, -1, 5]) == [0]


def test_step_ends_follow_the_resolved_text(tokenizer):
    bt = tokenizer.convert_tokens_to_ids(BT)
    wrong = tokenizer.encode("3 + 4 = 9.", add_special_tokens=False)
    ids = wrong + [bt] * len(wrong) + tokenizer.encode("3 + 4 = 7. The answer is 7.", add_special_tokens=False)
    ends = diagnostics.step_ends(ids, tokenizer, bt)
    assert [step for _, step in ends] == ["3 + 4 = 9.", "3 + 4 = 7.", "The answer is 7."]
    assert ends[0][0] == len(wrong) and ids[ends[0][0]] == bt


# --------------------------------------------------------------------------- a real (tiny) transformer


def test_teacher_forcing_is_the_same_batched_or_alone(tmp_path: Path, tokenizer):
    """Left padding must not change a probability: position ids count from each sequence's first token."""
    from llmhalluc.backtrack.token import add_backtrack_token
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny", [f"{a} + {b} = {a + b}." for a in range(10) for b in range(10)],
                              hidden_size=32, intermediate_size=64)
    model, tok = load_model_and_tokenizer(str(folder), dtype="float32")
    bt = add_backtrack_token(model, tok)
    model.eval()
    sequences = [tok.encode(t, add_special_tokens=False) for t in ("1 + 2 = 3.", "4 + 4 = 8. 8 + 1 = 9.", "7.")]
    ends = [[3, len(sequences[0])], [2, len(sequences[1])], [1]]
    batched = diagnostics.next_token_stats(model, sequences, ends, token_id=bt, batch_size=3, pad_id=0)
    alone = [diagnostics.next_token_stats(model, [s], [e], token_id=bt, batch_size=1, pad_id=0)[0]
             for s, e in zip(sequences, ends, strict=True)]
    for got, want in zip(batched, alone, strict=True):
        assert [a for _, a in got] == [a for _, a in want]
        assert [p for p, _ in got] == pytest.approx([p for p, _ in want], rel=1e-4, abs=1e-7)


def test_the_linear_probe_scores_held_out_items_only():
    """A pair shares its context (most of its state); a wrong step adds a direction the probe must find.
    Found: AUROC near 1 on the held-out fold. States that carry nothing about the label give about
    0.5, not the near 1 a probe scored on its own training items would (64 dimensions, 20 pairs)."""
    import torch

    generator = torch.Generator().manual_seed(0)

    def states(n: int) -> torch.Tensor:
        return torch.randn(n, 64, generator=generator, dtype=torch.float64)

    context = states(40)
    knows = context + 0.3 * states(40)
    knows[:, 0] += 4.0
    wrong, right = diagnostics.cross_fitted_scores(knows, context + 0.3 * states(40))
    assert diagnostics.auroc(wrong, right) > 0.9
    wrong, right = diagnostics.cross_fitted_scores(context[:20] + 0.3 * states(20), context[:20] + 0.3 * states(20))
    assert 0.25 < diagnostics.auroc(wrong, right) < 0.75
    assert diagnostics.cross_fitted_scores(context[:3], context[:3]) is None  # a fold would hold one pair
