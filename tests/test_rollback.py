"""The rollback decoder on scripted models whose every next token is fixed by hand, driven through the same
decoding contract transformers' generate() gives (logits processors before the argmax, per-row stopping criteria,
pad after a row ends), and on a real tiny transformer against plain greedy decoding.

What must hold: the retracted tokens leave the context (the model is never asked to go on from them), the
excluded continuation is never emitted again at the same point, the retries stop at their bound, and a model
that never backtracks is decoded exactly as plain greedy decoding decodes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmhalluc import evaluation
from llmhalluc.backtrack.retraction import Retraction
from llmhalluc.rollback import generate_rollback
from tests.cache_reads import CacheReads

#: A word-level vocabulary: one id per text, so the scripts read as the solutions they write.
WORDS = ["<eos>", "<bt>", "<p>", "Q", "7", " +", " 3", " =", " 10", " 11", " 12", ".", " The", " answer", " is",
         " 9", " 8"]
ID = {w: i for i, w in enumerate(WORDS)}
EOS, BT, PAD = ID["<eos>"], ID["<bt>"], ID["<p>"]
PROMPT = [ID["Q"]]


def ids(*words: str) -> list[int]:
    return [ID[w] for w in words]


RIGHT = ids("7", " +", " 3", " =", " 10", ".")
WRONG = ids("7", " +", " 3", " =", " 11", ".")
ANSWER = ids(" The", " answer", " is", " 10", ".")


class Tokenizer:
    eos_token_id = EOS
    pad_token_id = PAD

    def decode(self, tokens, skip_special_tokens=False):
        return "".join(WORDS[t] for t in tokens if not (skip_special_tokens and t in (BT, EOS, PAD)))


class Scripted:
    """A causal LM whose logits are a rule over the assistant ids so far: rule(ids) -> {token: logit}, every other
    token at 0. Its forward follows transformers' cached contract as decoding.decode_batch drives it (the ids
    already read are in the cache, tests/cache_reads.py follows its batch operations; padding is masked
    wherever it stands); every context a batch starts from is recorded."""

    def __init__(self, rule) -> None:
        import torch
        from transformers import GenerationConfig

        self.rule = rule
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(eos_token_id=EOS)
        self.contexts: list[list[int]] = []
        self.reads = CacheReads()  # the ids read through each cache so far

    def parameters(self):
        return iter([self.anchor])

    def _logits(self, context: list[int]):
        import torch

        row = torch.zeros(len(WORDS))
        for token, logit in self.rule(context[len(PROMPT):]).items():
            row[token] = logit
        return row

    def __call__(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, cache=None, **_):
        import torch

        rows = input_ids.shape[0]
        full, starts = self.reads.extend(cache, input_ids, masked=attention_mask is not None)
        mask = attention_mask if attention_mask is not None else torch.ones_like(full)
        if cache is not None and starts:
            self.contexts += [full[b][mask[b].bool()].tolist() for b in range(rows)]
        width = full.shape[1]
        keep = logits_to_keep or input_ids.shape[1]
        logits = torch.zeros(rows, keep, len(WORDS))
        for b in range(rows):
            for k, column in enumerate(range(width - keep, width)):
                if mask[b, column]:
                    logits[b, k] = self._logits(full[b, :column + 1][mask[b, :column + 1].bool()].tolist())
        return SimpleNamespace(logits=logits)

    forward = __call__


def follow(path: list[int]):
    """The next token of path after ids (resolved by the token unit), else end."""

    def next_of(written: list[int]) -> int:
        return path[len(written)] if len(written) < len(path) and written == path[:len(written)] else EOS

    return next_of


def errs_once_then_retracts(written: list[int]) -> dict[int, float]:
    """Its own greedy mistake: at " =" it prefers " 11" (30) over " 10" (29); right after the wrong step it
    retracts it token by token; otherwise it goes on with the right solution."""
    kept = Retraction("token", BT).resolve(written)
    if kept == WRONG[:len(kept)] and len(kept) == len(WRONG):
        return {BT: 40.0}
    if written and written[-1] == BT and kept:  # still inside a retraction: pop until the step is gone
        return {BT: 40.0}
    if kept == RIGHT[:4]:
        return {ID[" 11"]: 30.0, ID[" 10"]: 29.0}
    target = RIGHT + ANSWER
    nxt = follow(target)(kept)
    if nxt == EOS and kept == WRONG[:len(kept)]:
        nxt = WRONG[len(kept)]
    return {nxt: 30.0}


def decode(model, prompts=None, *, unit="token", max_new_tokens=40, max_retries=3, prefixes=None, batch_size=2,
           greedy=None):
    tokenizer = Tokenizer()
    retraction = Retraction(unit, BT, tokenizer.decode)
    return generate_rollback(model, tokenizer, prompts or [PROMPT], retraction=retraction,
                             max_new_tokens=max_new_tokens, max_retries=max_retries, batch_size=batch_size,
                             prefixes=prefixes, greedy=greedy)


def test_a_rollback_removes_exactly_the_retracted_tokens_and_never_repeats_the_excluded_continuation():
    model = Scripted(errs_once_then_retracts)
    [out] = decode(model)
    assert out.ids == WRONG + [BT] * len(WRONG) + RIGHT + ANSWER  # the trajectory: mistake, retraction, repair
    assert Retraction("token", BT).resolve(out.ids) == RIGHT + ANSWER
    assert out.retries == 1
    # The model was asked to go on from the prompt, then from the prompt alone again: never from the wrong step.
    assert model.contexts == [PROMPT, PROMPT]
    # Greedy from the clean context would write the same step again; the least sure token (" 11", margin 1)
    # was banned there, so the regenerated step left the excluded one exactly there.
    generated = len(WRONG) * 2 + 1 + len(RIGHT + ANSWER)  # mistake, backtracks, dropped token, the rest
    assert out.generated == generated


def test_a_model_that_never_backtracks_decodes_exactly_as_greedy():
    def rule(written):
        return {follow(RIGHT + ANSWER)(written): 30.0, BT: -5.0}

    prompts = [PROMPT, [*PROMPT, ID["7"]], PROMPT]
    model = Scripted(rule)
    greedy = evaluation.generate_transformers(model, Tokenizer(), prompts, batch_size=2,
                                              sampling=evaluation.Sampling(max_new_tokens=8))
    rolled = decode(model, prompts, max_new_tokens=8)
    assert [r.ids for r in rolled] == greedy
    assert [r.retries for r in rolled] == [0, 0, 0]
    assert [r.generated for r in rolled] == [len(g) for g in greedy]  # and costs what greedy costs
    assert [len(g) for g in greedy] == [8, 8, 8]  # the budget, as greedy's max_new_tokens


def test_retries_stop_at_their_bound_and_then_the_backtrack_is_not_emitted():
    def stubborn(written):
        kept = Retraction("token", BT).resolve(written)
        if written and written[-1] != BT and len(kept) == 2:
            return {BT: 50.0, ID[" 9"]: 30.0}  # retracts every second token, whatever it is
        return {ID[" 9"]: 30.0, ID[" 8"]: 29.0, ID[" 12"]: 28.0, ID[" 3"]: 27.0}

    [out] = decode(Scripted(stubborn), max_new_tokens=5, max_retries=2)
    assert out.retries == 2
    assert out.ids.count(BT) == 2
    resolved = Retraction("token", BT).resolve(out.ids)
    assert len(resolved) == 5 and BT not in resolved  # after the bound, greedy to the budget with no backtrack
    # The two retracted continuations were each excluded where they were written: the second token differs.
    seconds = [out.ids[i - 1] for i, t in enumerate(out.ids) if t == BT]
    assert len(set(seconds)) == 2 and resolved[1] not in seconds


def test_a_step_unit_rollback_retracts_the_whole_step_and_the_given_prefix_is_retractable():
    """The probe's case: the wrong step is given (not the model's), the model backtracks once (step unit)."""

    def rule(written):
        kept = Retraction("step", BT, Tokenizer().decode).resolve(written)
        if written[-len(WRONG):] == WRONG:
            return {BT: 40.0}
        return {follow(RIGHT + ANSWER)(kept): 30.0}

    model = Scripted(rule)
    [out] = decode(model, unit="step", prefixes=[WRONG])
    assert out.ids == [*WRONG, BT, *RIGHT, *ANSWER]
    assert out.retries == 1
    assert model.contexts == [PROMPT + WRONG, PROMPT]  # after the rollback: the prompt alone, the step gone
    # The given step was not the model's greedy text (its argmax after "7 + 3 =" is " 10"): nothing is banned,
    # and greedy writes the right step by itself.


def test_rollback_on_a_real_tiny_transformer_that_never_backtracks_equals_greedy(tmp_path: Path):
    from llmhalluc.backtrack.token import add_backtrack_token
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.tiny_model import build_tiny_model

    corpus = [f"{a} + {b} = {a + b}." for a in range(10) for b in range(10)]
    folder = build_tiny_model(tmp_path / "tiny", corpus, hidden_size=32, intermediate_size=64)
    model, tok = load_model_and_tokenizer(str(folder), dtype="float32")
    bt = add_backtrack_token(model, tok)  # initialised at the mean row: never the argmax of this model
    model.eval()
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("1 + 2 =", "4 + 4 = 8. 8 +", "7", "3 + 3 = 6. 6")]
    greedy = evaluation.generate_transformers(model, tok, prompts, batch_size=2,
                                              sampling=evaluation.Sampling(max_new_tokens=12))
    rolled = generate_rollback(model, tok, prompts, retraction=Retraction("token", bt), max_new_tokens=12,
                               max_retries=2, batch_size=2)
    assert bt not in {t for g in greedy for t in g}
    assert [r.ids for r in rolled] == greedy


@pytest.mark.parametrize("rule", [errs_once_then_retracts, lambda written: {follow(RIGHT + ANSWER)(written): 30.0}],
                         ids=["backtracks", "never"])
def test_greedy_completions_given_as_the_first_round_change_nothing_but_the_work(rule):
    prompts = [PROMPT, PROMPT]
    model = Scripted(rule)
    greedy = evaluation.generate_transformers(model, Tokenizer(), prompts, batch_size=2,
                                              sampling=evaluation.Sampling(max_new_tokens=40))
    calls = len(model.contexts)
    reused = decode(model, prompts, greedy=greedy)
    generated_again = len(model.contexts) - calls
    plain = decode(Scripted(rule), prompts)
    assert [(r.ids, r.retries, r.generated) for r in reused] == [(r.ids, r.retries, r.generated) for r in plain]
    # the first round was read, not generated: only completions that backtracked decode on
    assert generated_again == (2 if rule is errs_once_then_retracts else 0)
