"""Real-model code paths with a real tokenizer: SmolLM2's (tests/fixtures/smollm2_tokenizer, 49k tokens, ChatML,
eos = pad = <|im_end|>) under a tiny random-weight Llama with tied embeddings, through all five stages.

The built-in model is a Qwen2 with untied embeddings and a tokenizer trained on the task; a pretrained
chat model differs in exactly the ways that broke before (tied rows, a template without generation
markers, its own end-of-turn token, a local base that lineage must identify), so these run in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmhalluc.backtrack.encoding import encode_records
from llmhalluc.content_hash import folder_sha256
from tests.conftest import ROOT
from tests.tiny_project import run

FIXTURE = ROOT / "tests" / "fixtures" / "smollm2_tokenizer"


def tiny_llama(folder: Path) -> Path:
    """A 1-layer, 16-wide Llama with tied embeddings over SmolLM2's tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("smol-tiny"))


def test_sft_targets_end_with_the_templates_end_of_turn(base: Path) -> None:
    from transformers import AutoTokenizer

    from llmhalluc.datasets.records import Record
    from llmhalluc.models import end_of_turn_token

    tokenizer = AutoTokenizer.from_pretrained(base)
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    record = Record(id="r0", question="Start with 3. Add 4. What is the result?", steps=["3 + 4 = 7."],
                    answer="7", prompt=[{"role": "user", "content": "Start with 3. Add 4. What is the result?"}])
    [example], [prompt_length] = encode_records([record], tokenizer, 49152, mask_errors=False)
    labels = example["labels"]
    assert labels[:prompt_length] == [-100] * prompt_length  # the prompt is never trained on
    assert tokenizer.decode(labels[prompt_length:]) == "3 + 4 = 7. The answer is 7.<|im_end|>"


@pytest.fixture(scope="module")
def pipeline(base: Path, tmp_path_factory) -> Path:
    """prepare -> SFT (LoRA, on the tied model) -> GRPO (full weights) -> merge -> eval, a couple of steps each."""
    folder = tmp_path_factory.mktemp("pipeline")
    run("prepare", "prepare", folder)
    run("train_sft", "sft", folder, {"sft.model_name_or_path": str(base), "sft.lora.enabled": True,
                                     "sft.max_steps": 2, "sft.learning_rate": 0.05, "sft.max_length": 256})
    run("train_grpo", "grpo", folder, {"grpo.max_completion_length": 16})
    run("merge", "merge", folder)
    run("eval", "eval", folder, {"eval.max_new_tokens": 16})
    return folder


def test_pipeline_records_the_local_base_and_names_no_local_path_as_base_model(pipeline: Path, base: Path) -> None:
    sft = json.loads((pipeline / "models/sft/lineage.json").read_text())
    assert sft["kind"] == "lora" and sft["end_of_turn"] == "<|im_end|>"
    assert sft["base"]["name_or_path"] == str(base)
    assert sft["base"]["sha256"] == folder_sha256(base)  # the local base is identified by content, not path
    merged = json.loads((pipeline / "models/merged/lineage.json").read_text())
    assert merged["base"]["sha256"] == sft["base"]["sha256"]
    card = (pipeline / "models/merged/README.md").read_text()
    assert "base_model:" not in card.split("---")[1]  # a local folder is no hub id
    assert folder_sha256(base) in card


def test_pipeline_merges_and_evaluates_the_tied_model(pipeline: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(pipeline / "models/merged")
    tokenizer = AutoTokenizer.from_pretrained(pipeline / "models/merged")
    assert merged.config.tie_word_embeddings
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    assert merged.get_input_embeddings().weight.shape[0] == len(tokenizer) == 49153  # SmolLM2's 49152 + backtrack
    metrics = json.loads((pipeline / "metrics/eval.json").read_text())
    assert set(metrics) >= {"sft", "grpo"}
