"""Backtrack augmentation invariant: resolving the rendered ids gives back exactly the clean solution.

prepare records where an error goes and what it says; train_sft renders it in
ids, segment by segment. Checked here for two unlike tokenizers (byte-level
BPE as Qwen2/GPT-2 use, and a SentencePiece-style Unigram with a metaspace) on
every dataset family, with several errors per example, plausible and random.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmhalluc.backtrack.encoding import IGNORE_INDEX, encode_example
from llmhalluc.backtrack.retraction import resolve_ids
from llmhalluc.datasets import arithmetic
from llmhalluc.datasets.augment import add_errors
from llmhalluc.datasets.converters import CONVERTERS, Context
from llmhalluc.datasets.mistakes import KINDS, nudge_number
from llmhalluc.datasets.records import Record
from llmhalluc.params.sections import ArithmeticParams, BacktrackAugmentParams

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "<|backtrack|>"


def _records() -> list[Record]:
    records = []
    for name, converter, prompt in (("gsm8k", "gsm8k", "{question}"),
                                    ("squad", "squad_v2", "Context: {context}\n\nQuestion: {question}")):
        ctx = Context(entry=name, columns={}, prompt=prompt, abstain_answer="unanswerable")
        lines = (FIXTURES / f"{'gsm8k' if name == 'gsm8k' else 'squad_v2'}_sample.jsonl").read_text().splitlines()
        records += [CONVERTERS[converter](json.loads(line), i, ctx) for i, line in enumerate(lines)]
    stream = arithmetic.generate(ArithmeticParams(max_steps=4, max_operand=50), random.Random(3))
    ctx = Context(entry="arithmetic", columns={}, prompt="{question}", abstain_answer="unanswerable")
    records += [CONVERTERS["arithmetic"](next(stream), i, ctx) for i in range(30)]
    return records


def _byte_level_bpe(tmp_path: Path, corpus: list[str]):
    from transformers import AutoTokenizer

    from llmhalluc.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "bpe", corpus, vocab_size=400, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=32, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    tokenizer.add_special_tokens({"additional_special_tokens": [TOKEN]})
    return tokenizer


def _unigram_metaspace(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", TOKEN],
                                                            unk_token="<unk>", show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", additional_special_tokens=[TOKEN])


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    corpus = [text for r in _records() for text in (r.question, r.solution())]
    return {"byte-level BPE": _byte_level_bpe(tmp_path_factory.mktemp("tok"), corpus),
            "unigram metaspace": _unigram_metaspace(corpus)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ["byte-level BPE", "unigram metaspace"])
def test_resolving_backtracks_gives_back_the_clean_solution(tokenizers, name: str, kind: str):
    tokenizer = tokenizers[name]
    backtrack_id = tokenizer.convert_tokens_to_ids(TOKEN)
    records = _records()
    add_errors(records, BacktrackAugmentParams(error_rate=1.0, errors_per_example=2, error_kind=kind),
               random.Random(0))
    assert all(len(r.errors) == 2 for r in records)

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    prompt_ids = [1, 2, 3]
    for record in records:
        def render(errors, record=record):
            return encode_example(prompt_ids, record.steps, record.answer_sentence(), errors, tokenize,
                                  backtrack_id, [0], mask_errors=False)

        augmented = render([(e.step, e.text) for e in record.errors])
        clean = render([])
        completion = augmented["input_ids"][len(prompt_ids):]
        assert completion.count(backtrack_id) == sum(len(tokenize((" " if e.step else "") + e.text))
                                                     for e in record.errors)
        assert resolve_ids(completion, backtrack_id) == clean["input_ids"][len(prompt_ids):]
        if name == "byte-level BPE":  # byte level round-trips text exactly, spaces included
            assert tokenizer.decode(resolve_ids(completion, backtrack_id)[:-1]) == record.solution()
        # The prompt is never trained on.
        assert augmented["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)


def test_error_rate_zero_leaves_records_untouched():
    records = _records()
    before = [r.segments() for r in records]
    add_errors(records, BacktrackAugmentParams(error_rate=0.0), random.Random(0))
    assert [r.segments() for r in records] == before and not any(r.errors for r in records)


def test_plausible_error_is_a_near_miss_number():
    rng = random.Random(0)
    for _ in range(200):
        wrong = nudge_number("7 + 5 = 12.", rng)
        assert wrong.startswith("7 + 5 = ") and wrong != "7 + 5 = 12." and abs(int(wrong[8:-1]) - 12) <= 2
    assert nudge_number("He pays $2.50 in total.", rng).startswith("He pays $2.5")
    assert nudge_number("The answer is France.", rng) is None
