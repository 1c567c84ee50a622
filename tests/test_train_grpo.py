"""train_grpo on the tiny model from a tiny SFT model: start point, lineage, tracking, and params the trainer used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmhalluc.models import load_model_and_tokenizer
from tests.tiny_project import run


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory) -> Path:
    """data/prepared and a LoRA SFT model (models/sft), built once by the real stages."""
    folder = tmp_path_factory.mktemp("sft")
    run("prepare", "prepare", folder)
    run("train_sft", "sft", folder, {"sft.lora.enabled": True, "sft.max_steps": 2})
    return folder


def project(tmp_path: Path, source: Path) -> Path:
    for name in ("data", "models"):
        shutil.copytree(source / name, tmp_path / name)
    return tmp_path


def test_lora_grpo_from_lora_sft(tmp_path: Path, sft_lora: Path, monkeypatch) -> None:
    folder = project(tmp_path, sft_lora)
    run("train_grpo", "grpo", folder, {"grpo.lora.enabled": True, "grpo.beta": 0.04})

    out = folder / "models/grpo"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["kind"] == "lora" and lineage["backtrack_token"] == "<|backtrack|>"
    assert lineage["parent"]["path"] == "models/sft" and lineage["parent"]["lineage"]["kind"] == "lora"
    assert lineage["base"]["name_or_path"] == "builtin:tiny-qwen2" and lineage["base"]["path"] == "../sft/base"
    assert lineage["params"]["num_generations"] == 2 and lineage["params"]["beta"] == 0.04
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()

    # The adapter stack rebuilds as a plain model (base -> SFT adapter merged -> GRPO adapter merged).
    monkeypatch.chdir(folder)  # lineage paths are relative to the repository root, as DVC runs stages
    model, _ = load_model_and_tokenizer("models/grpo")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.get_input_embeddings().weight.shape[0] == lineage["vocab_rows"]

    live = folder / "dvclive/train_grpo"
    metrics = json.loads((live / "metrics.json").read_text())["train"]
    assert {"reward", "reward_std", "kl"} <= set(metrics)
    assert set(metrics["rewards"]) == {"accuracy", "format"}
    assert {"mean_per_completion", "share_with_any", "corrected", "broken"} == set(metrics["backtracks"])
    assert "mean_length" in metrics["completions"]
    assert (live / "plots/metrics/train/reward.tsv").read_text().split()[:2] == ["step", "reward"]

    tables = sorted((live / "completions").glob("step_*.json"))
    assert [t.name for t in tables] == ["step_00001.json", "step_00002.json"]
    rows = json.loads(tables[-1].read_text())
    assert len(rows) == 4  # the generation batch: per_device_train_batch_size 4
    assert {"prompt", "raw", "resolved", "backtracks", "reward/accuracy", "reward/format", "advantage"} <= set(rows[0])
    assert not list((folder / "checkpoints/grpo").glob("checkpoint-*"))


def test_trainer_uses_the_params(tmp_path: Path, sft_lora: Path, monkeypatch, grpo_recorder) -> None:
    """num_generations, max_completion_length and temperature, read off the trainer and its completions."""
    seen = grpo_recorder
    folder = project(tmp_path, sft_lora)
    run("train_grpo", "grpo", folder, {"grpo.num_generations": 4, "grpo.max_completion_length": 5,
                                       "grpo.temperature": 0.7, "grpo.per_device_train_batch_size": 8,
                                       "grpo.max_steps": 1})
    (trainer,) = seen["trainers"]
    assert trainer.num_generations == 4
    assert trainer.generation_config.temperature == 0.7 and trainer.temperature == 0.7
    assert trainer.generation_config.max_new_tokens == 5
    (batch,) = seen["batches"]
    # 8 completions padded to the longest; a 2-step SFT model does not stop within 5 tokens.
    assert tuple(batch["completion_ids"].shape) == (8, 5)
    # 8 completions = 2 prompts x 4 generations: each distinct prompt appears exactly 4 times.
    prompts = [tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["prompt_ids"], batch["prompt_mask"],
                                                                     strict=True)]
    assert sorted(prompts.count(p) for p in set(prompts)) == [4, 4]


def test_resume_after_crash_equals_uninterrupted(tmp_path: Path, sft_lora: Path, monkeypatch, capsys) -> None:
    from safetensors.torch import load_file

    from llmhalluc import checkpoints

    edits = {"grpo.max_steps": 4, "grpo.save_steps": 2}
    whole = project(tmp_path / "whole", sft_lora)
    run("train_grpo", "grpo", whole, edits)
    crashed = project(tmp_path / "crashed", sft_lora)
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "clean", lambda output_dir: None)
        run("train_grpo", "grpo", crashed, edits)
    (crashed / "checkpoints/grpo/checkpoint-4/trainer_state.json").unlink()  # died while saving step 4
    shutil.rmtree(crashed / "models/grpo")
    capsys.readouterr()
    run("train_grpo", "grpo", crashed, edits)
    assert "resuming from checkpoints/grpo/checkpoint-2" in capsys.readouterr().out

    a, b = (load_file(str(f / "models/grpo/model.safetensors")) for f in (whole, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    live = "dvclive/train_grpo/plots/metrics/train/reward.tsv"
    assert (crashed / live).read_text() == (whole / live).read_text()
    tables = [sorted(p.name for p in (f / "dvclive/train_grpo/completions").iterdir()) for f in (whole, crashed)]
    assert tables[0] == tables[1] == [f"step_0000{i}.json" for i in range(1, 5)]
    step3 = "dvclive/train_grpo/completions/step_00003.json"  # generated after the resume: same samples
    assert (crashed / step3).read_text() == (whole / step3).read_text()
