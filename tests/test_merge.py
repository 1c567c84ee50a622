"""merge: base -> SFT -> GRPO rebuilt from lineage and merged; the folder loads with transformers alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmhalluc.errors import DataError
from llmhalluc.models import load_adapter_stack, load_model_and_tokenizer, refuse_quantised
from tests.tiny_project import run

PROMPTS = ["Start with 3. Add 4. What is the result?", "3 + 4 = 8<|backtrack|>7. The answer is 7."]


@pytest.fixture(scope="module")
def lora_chain(tmp_path_factory) -> Path:
    """prepare -> LoRA SFT -> LoRA GRPO -> merge, each a couple of steps (lr high enough to move the rows)."""
    folder = tmp_path_factory.mktemp("chain")
    run("prepare", "prepare", folder)
    run("train_sft", "sft", folder, {"sft.lora.enabled": True, "sft.max_steps": 2, "sft.learning_rate": 0.05})
    run("train_grpo", "grpo", folder, {"grpo.lora.enabled": True, "grpo.learning_rate": 0.05})
    run("merge", "merge", folder)
    return folder


def logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(torch.tensor([tokenizer.encode(text)])).logits[0] for text in PROMPTS]


def test_merged_equals_adapter_stack(lora_chain: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(lora_chain)
    merged = AutoModelForCausalLM.from_pretrained("models/merged", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained("models/merged")
    grpo_lineage = json.loads(Path("models/grpo/lineage.json").read_text())
    # The stack with the last adapter *not* merged: SFT weights, then the GRPO adapter applied on the fly.
    stack = load_adapter_stack("models/grpo", grpo_lineage, merge=False, dtype="float32",
                               attn_implementation=None, trust_remote_code=False)
    for a, b in zip(logits(merged, tokenizer), logits(stack, tokenizer), strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()

    # The backtrack token's trained rows survived: they are the GRPO adapter's trainable-token rows.
    bt = tokenizer.convert_tokens_to_ids("<|backtrack|>")
    assert bt == grpo_lineage["backtrack_id"]
    base = stack.get_base_model()
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    trained_in = embed.token_adapter.trainable_tokens_delta["default"][0]
    trained_out = head.token_adapter.trainable_tokens_delta["default"][0]
    assert torch.equal(merged.get_input_embeddings().weight[bt], trained_in.detach())
    assert torch.equal(merged.get_output_embeddings().weight[bt], trained_out.detach())


def test_adapter_rows_are_what_merge_writes(tmp_path: Path, lora_chain: Path) -> None:
    """Rows set in the GRPO adapter's trainable tokens (here: shifted by hand) are the merged model's rows."""
    from safetensors.torch import load_file, save_file

    for name in ("data", "models"):
        shutil.copytree(lora_chain / name, tmp_path / name)
    adapter = tmp_path / "models/grpo/adapter_model.safetensors"
    tensors = load_file(str(adapter))
    rows = {k: v for k, v in tensors.items() if "trainable_tokens_delta" in k}
    assert len(rows) == 2  # input embedding and lm_head
    save_file({k: (v + 1.0 if k in rows else v) for k, v in tensors.items()}, str(adapter), metadata={"format": "pt"})
    run("merge", "merge", tmp_path)

    merged, tokenizer = load_model_and_tokenizer(str(tmp_path / "models/merged"))
    bt = tokenizer.convert_tokens_to_ids("<|backtrack|>")
    embed_row = next(v for k, v in rows.items() if "embed_tokens" in k)[0] + 1.0
    head_row = next(v for k, v in rows.items() if "lm_head" in k)[0] + 1.0
    assert torch.equal(merged.get_input_embeddings().weight[bt].detach(), embed_row)
    assert torch.equal(merged.get_output_embeddings().weight[bt].detach(), head_row)


def test_folder_is_plain_and_documented(lora_chain: Path) -> None:
    out = lora_chain / "models/merged"
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", "lineage.json", "resolved_params.json"} <= names
    assert not list(out.glob("*.bin")) and "adapter_config.json" not in names
    # Loads with transformers alone: no peft, no project code imported.
    code = ("import sys; from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; "
            f"m = M.from_pretrained({str(out)!r}); t = T.from_pretrained({str(out)!r}); "
            "assert 'peft' not in sys.modules and 'llmhalluc' not in sys.modules; "
            "assert t.convert_tokens_to_ids('<|backtrack|>') < m.get_input_embeddings().weight.shape[0]; "
            "assert '<|im_start|>assistant' in t.apply_chat_template([{'role': 'user', 'content': 'x'}], "
            "tokenize=False, add_generation_prompt=True); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]

    card = (out / "README.md").read_text()
    lineage = json.loads((out / "lineage.json").read_text())
    assert [n["stage"] for n in lineage_chain(lineage)] == ["train_sft", "train_grpo", "merge"]
    assert "builtin:tiny-qwen2" in card and "train_sft: lora weights" in card and "train_grpo: lora weights" in card
    assert lineage["parent"]["lineage"]["data"]["sha256"] in card
    assert '"num_generations": 2' in card and '"mask_errors": false' in card  # resolved params of each stage
    assert "dvc metrics show" in card  # eval runs after merge: the card points at its metrics


def lineage_chain(lineage: dict) -> list[dict]:
    from llmhalluc.lineage import Lineage

    return Lineage(lineage).chain()


def test_dtype_card_metrics_and_full_passthrough(tmp_path: Path, lora_chain: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path
    for name in ("data", "models"):
        shutil.copytree(lora_chain / name, folder / name)
    (folder / "metrics").mkdir()  # a stale eval summary from an earlier run stays out of the card
    (folder / "metrics/eval.json").write_text(json.dumps({"models/merged": {"accuracy": 0.25}}))
    run("train_grpo", "grpo", folder, {"grpo.max_steps": 1})           # full GRPO on the merged SFT adapter
    run("merge", "merge", folder, {"merge.dtype": "bfloat16"})
    out = folder / "models/merged"
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    assert '"accuracy": 0.25' not in card and "dvc metrics show" in card and "train_grpo: full weights" in card
    # A full fine-tune passes through: the merged weights are GRPO's, cast to bfloat16.
    grpo, merged = load_file(str(folder / "models/grpo/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(grpo) == set(merged)
    assert all(torch.equal(grpo[k].to(torch.bfloat16), merged[k]) for k in grpo)


def test_quantised_weights_are_refused(lora_chain: Path) -> None:
    model, _ = load_model_and_tokenizer(str(lora_chain / "models/sft/base"))
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.raises(DataError, match="quantised \\(bitsandbytes\\)"):
        refuse_quantised(model, "models/sft")
