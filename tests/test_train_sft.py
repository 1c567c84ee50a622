"""train_sft on the tiny model, CPU, a few steps: what TRL trains, LoRA rows, lineage, determinism, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from llmhalluc.backtrack.encoding import IGNORE_INDEX, encode_records
from llmhalluc.backtrack.token import add_backtrack_token
from llmhalluc.content_hash import folder_sha256
from llmhalluc.datasets.records import Error, Record, chat_prompt
from llmhalluc.models import load_model_and_tokenizer
from llmhalluc.tiny_model import build_tiny_model
from tests.tiny_project import TINY, run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """data/prepared for TINY sizes, written once by the real prepare stage (with errors to backtrack over)."""
    folder = tmp_path_factory.mktemp("prepared")
    run("prepare", "prepare", folder, {"prepare.backtrack.error_rate": 0.5})
    return folder / "data"


def project(tmp_path: Path, prepared: Path) -> Path:
    shutil.copytree(prepared, tmp_path / "data")
    return tmp_path


def weights_hash(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def git_init(folder: Path) -> None:
    import subprocess

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-q", "-m", "data"]):
        subprocess.run(command, cwd=folder, check=True, capture_output=True)


def git_head(folder: Path) -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


def curve(folder: Path, name: str = "loss") -> list[tuple[int, float]]:
    lines = (folder / "dvclive" / "train_sft" / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().split()
    return [(int(s), float(v)) for s, v in zip(lines[2::2], lines[3::2], strict=True)]


# --------------------------------------------------------------------------- label mask


@pytest.mark.parametrize("mask_errors", [False, True])
def test_trained_positions(tmp_path: Path, mask_errors: bool) -> None:
    """Which positions the SFTTrainer's collated batch trains: never the prompt; errors only without mask_errors."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    corpus = ["Start with 8. Add 4. 8 + 4 = 12. The answer is 12."] * 20
    model, tokenizer = load_model_and_tokenizer(str(build_tiny_model(tmp_path / "m", corpus, vocab_size=300,
                                                                     hidden_size=32, num_heads=2)))
    bt = add_backtrack_token(model, tokenizer)
    record = Record(id="r1", question="Start with 8. Add 4.", steps=["8 + 4 = 12."], answer="12",
                    errors=[Error(step=0, text="8 + 4 = 13.")], prompt=chat_prompt("Start with 8. Add 4.", "Solve."))
    example = encode_records([record], tokenizer, bt, mask_errors=mask_errors)[0][0]

    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, report_to="none",
                     use_cpu=True, bf16=False, max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([example]),
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert ids == example["input_ids"]

    prompt = tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    error = tokenizer.encode("8 + 4 = 13.", add_special_tokens=False)
    correction = tokenizer.encode("8 + 4 = 12. The answer is 12.", add_special_tokens=False)
    n, e = len(prompt), len(error)
    assert ids == prompt + error + [bt] * e + correction + [tokenizer.eos_token_id]
    assert labels[:n] == [IGNORE_INDEX] * n                              # prompt: never trained
    assert labels[n:n + e] == ([IGNORE_INDEX] * e if mask_errors else error)  # error: only without mask_errors
    assert labels[n + e:n + 2 * e] == [bt] * e                           # backtracks: always trained
    assert labels[n + 2 * e:] == [*correction, tokenizer.eos_token_id] # correction and stop token: trained


# --------------------------------------------------------------------------- full fine-tune


def test_full_run_outs_lineage_and_determinism(tmp_path: Path, prepared: Path) -> None:
    runs = []
    for name in ("a", "b"):
        folder = project(tmp_path / name, prepared)
        if name == "b":
            git_init(folder)
        run("train_sft", "sft", folder)
        runs.append(folder)
    a, b = runs
    assert curve(a) == curve(b) and len(curve(a)) == TINY["sft.max_steps"]
    assert [s for s, _ in curve(a)] == list(range(1, 7))            # one row per step, no duplicates
    assert weights_hash(a / "models/sft") == weights_hash(b / "models/sft")

    out = a / "models/sft"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["kind"] == "full" and lineage["backtrack_token"] == "<|backtrack|>"
    assert lineage["base"] == {"name_or_path": "builtin:tiny-qwen2", "path": "base", "revision": None,
                               "sha256": folder_sha256(out / "base")}  # what was built, by content
    assert lineage["data"]["sha256"] == hashlib.sha256((a / "data/prepared/sft.jsonl").read_bytes()).hexdigest()
    assert lineage["params"]["max_steps"] == 6 and lineage["params"]["tiny_model"]["hidden_size"] == 32
    # Nothing in the folder changes with the commit: a (no git) and b (a repository of its own) hash the same.
    assert "git_commit" not in lineage and folder_sha256(out) == folder_sha256(b / "models/sft")
    assert json.loads((a / "models/sft.run.json").read_text()) == {"stage": "train_sft", "git_commit": None,
                                                                   "git_dirty": None}
    assert json.loads((b / "models/sft.run.json").read_text())["git_commit"] == git_head(b)
    # The built-in base is kept in the out, loadable on its own, without the token.
    _, base_tok = load_model_and_tokenizer(str(out / "base"))
    model, tokenizer = load_model_and_tokenizer(str(out))
    assert "<|backtrack|>" not in base_tok.get_vocab()
    assert tokenizer.convert_tokens_to_ids("<|backtrack|>") == lineage["backtrack_id"]
    assert model.get_input_embeddings().weight.shape[0] == lineage["vocab_rows"]
    # A finished run leaves no scratch behind (checkpoints, curves as written); the metrics DVC shows are there.
    assert not (a / "checkpoints/sft").exists()
    metrics = json.loads((a / "dvclive/train_sft/metrics.json").read_text())
    assert metrics["step"] == 6 and {"loss", "learning_rate", "mean_token_accuracy"} <= set(metrics["train"])
    assert "train_runtime" not in json.dumps(metrics)                # wall-clock would break determinism
    # What max_length cut sits beside the loss in `dvc metrics show` (and in lineage, for GRPO and eval).
    assert metrics["data"] == {**lineage["lengths"], "examples": 64} and metrics["data"]["truncated_examples"] == 0


def test_resume_after_crash_equals_uninterrupted(tmp_path: Path, prepared: Path, monkeypatch, capsys) -> None:
    """A killed run leaves checkpoints (the newest half written); the rerun resumes and ends identical."""
    from llmhalluc import checkpoints

    whole = project(tmp_path / "whole", prepared)
    run("train_sft", "sft", whole)

    crashed = project(tmp_path / "crashed", prepared)
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "clean", lambda output_dir: None)    # keep what a killed run would leave
        run("train_sft", "sft", crashed)
    ckpts = crashed / "checkpoints/sft"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not (ckpts / "README.md").exists()                       # no TRL placeholder card in the scratch
    (ckpts / "checkpoint-6" / "trainer_state.json").unlink()         # died while saving step 6
    # DVC deletes the stage's outs before it runs again: the curves come back from the scratch, not from here.
    for out in ("models/sft", "models/sft.run.json", "dvclive/train_sft"):
        shutil.rmtree(crashed / out) if (crashed / out).is_dir() else (crashed / out).unlink()
    capsys.readouterr()

    run("train_sft", "sft", crashed)
    log = capsys.readouterr().out
    assert "removing checkpoints/sft/checkpoint-6: incomplete" in log
    assert "resuming from checkpoints/sft/checkpoint-4" in log
    assert weights_hash(crashed / "models/sft") == weights_hash(whole / "models/sft")
    assert curve(crashed) == curve(whole)                            # steps 5-6 logged once, same values
    assert not list(ckpts.glob("checkpoint-*"))


def test_checkpoints_of_another_run_are_not_resumed(tmp_path: Path, prepared: Path, monkeypatch, capsys) -> None:
    from llmhalluc import checkpoints

    folder = project(tmp_path, prepared)
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "clean", lambda output_dir: None)
        run("train_sft", "sft", folder)
    capsys.readouterr()
    run("train_sft", "sft", folder, {"sft.learning_rate": 0.0005})  # any value but the default
    log = capsys.readouterr().out
    assert "belong to another run (other params or data); starting fresh" in log
    assert "resuming" not in log


# --------------------------------------------------------------------------- LoRA


def test_lora_saves_adapter_with_both_backtrack_rows(tmp_path: Path, prepared: Path, monkeypatch) -> None:
    import warnings

    from peft import PeftModel
    from safetensors import safe_open

    from llmhalluc import checkpoints

    monkeypatch.setattr(checkpoints, "clean", lambda output_dir: None)  # keep the checkpoints to look at them
    folder = project(tmp_path, prepared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("train_sft", "sft", folder, {"sft.lora.enabled": True, "sft.learning_rate": 0.05})
    out = folder / "models/sft"

    # Checkpoints hold the adapter alone, as the final folder does: not both (resized) embedding matrices.
    saved = sorted((folder / "checkpoints/sft").glob("checkpoint-*/adapter_model.safetensors"))
    assert saved, "no LoRA checkpoint was written"
    final_size = (out / "adapter_model.safetensors").stat().st_size
    for checkpoint in saved:
        assert checkpoint.stat().st_size < 2 * final_size, (checkpoint, checkpoint.stat().st_size, final_size)
        with safe_open(str(checkpoint), "pt") as f:
            names = list(f.keys())
        assert not any(k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in names)
    assert not [w for w in caught if "save_embedding_layers" in str(w.message)]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["kind"] == "lora" and not (out / "model.safetensors").exists()
    assert (out / "adapter_model.safetensors").is_file() and (out / "base" / "model.safetensors").is_file()
    bt = lineage["backtrack_id"]

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        rows = {k: f.get_tensor(k) for k in keys if "trainable_tokens" in k}
    assert not any("embed_tokens.weight" in k or k.endswith("lm_head.weight") for k in keys)  # no full matrices
    assert {k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in rows} == {"embed_tokens", "lm_head"}

    # The initial rows (what add_backtrack_token wrote before training) ...
    base, tokenizer = load_model_and_tokenizer(str(out / "base"))
    add_backtrack_token(base, tokenizer, "<|backtrack|>", "mean", noise_std=0.01, seed=0)
    initial = (base.get_input_embeddings().weight[bt].clone(), base.get_output_embeddings().weight[bt].clone())

    # ... were trained, and the adapter carries the trained rows into the rebuilt model.
    model, tok = load_model_and_tokenizer(str(out))
    assert tok.convert_tokens_to_ids("<|backtrack|>") == bt
    trained = (model.get_input_embeddings().weight[bt], model.get_output_embeddings().weight[bt])
    embed_row = next(v for k, v in rows.items() if "embed_tokens" in k)[0]
    head_row = next(v for k, v in rows.items() if "lm_head" in k)[0]
    assert torch.equal(trained[0], embed_row) and torch.equal(trained[1], head_row)
    assert not torch.allclose(trained[0], initial[0]) and not torch.allclose(trained[1], initial[1])
    # Other rows are the base's: only the token's rows and the LoRA matrices were trained.
    assert torch.equal(model.get_input_embeddings().weight[:bt], base.get_input_embeddings().weight[:bt])

    # The same adapter through plain peft on the recorded base gives the same logits.
    base.resize_token_embeddings(lineage["vocab_rows"], mean_resizing=False)
    stacked = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([tok.encode(f"8 + 4 = 1{tok.convert_ids_to_tokens(bt)}12.")])
    with torch.no_grad():
        assert torch.allclose(stacked(ids).logits, model(ids).logits, atol=1e-5)


def test_kill_9_then_rerun_resumes_and_matches(tmp_path: Path, prepared: Path) -> None:
    """The real thing: SIGKILL the stage process once a checkpoint exists, run the stage again (LoRA run)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from llmhalluc.checkpoints import checkpoints, is_complete
    from tests.conftest import ROOT
    from tests.tiny_project import write_params

    edits = {"sft.lora.enabled": True, "sft.max_steps": 16, "sft.save_steps": 2, "sft.logging_steps": 2}
    whole = project(tmp_path / "whole", prepared)
    run("train_sft", "sft", whole, edits)

    killed = project(tmp_path / "killed", prepared)
    write_params(killed, {**TINY, **edits})
    script = [sys.executable, str(ROOT / "stages/train_sft.py")]
    proc = subprocess.Popen(script, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while not any(is_complete(c) for c in checkpoints(killed / "checkpoints/sft")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "models/sft").exists()

    done = subprocess.run(script, cwd=killed, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume: resuming from checkpoints/sft/checkpoint-" in done.stdout
    from safetensors.torch import load_file

    a = load_file(str(whole / "models/sft/adapter_model.safetensors"))
    b = load_file(str(killed / "models/sft/adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert curve(killed) == curve(whole)


def test_one_dvclive_logger_even_if_report_to_names_it(tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers.integrations import DVCLiveCallback
    from trl import SFTConfig, SFTTrainer

    from llmhalluc import tracking

    model, tokenizer = load_model_and_tokenizer(str(build_tiny_model(tmp_path / "m", ["1 + 1 = 2."] * 5,
                                                                     hidden_size=32, num_heads=2)))
    args = SFTConfig(output_dir=str(tmp_path / "out"), report_to=["dvclive"], use_cpu=True, bf16=False)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"input_ids": [1, 2, 3]}]))
    tracking.attach(trainer, tmp_path / "live")
    live = [c for c in trainer.callback_handler.callbacks if isinstance(c, DVCLiveCallback)]
    assert len(live) == 1 and isinstance(live[0], tracking.TrainerLive)
    assert live[0].live._dvcyaml is None and live[0].live._save_dvc_exp is False


def test_lora_on_a_tied_model_trains_the_one_shared_row(tmp_path: Path) -> None:
    """Hub models such as Qwen2.5-0.5B tie lm_head to the embedding: one trainable row serves both sides."""
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from llmhalluc.lora import lora_config, with_adapter
    from llmhalluc.params.sections import LoraParams

    path = build_tiny_model(tmp_path / "m", ["1 + 1 = 2. The answer is 2."] * 10, hidden_size=32, num_heads=2)
    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    _, tokenizer = load_model_and_tokenizer(str(path))
    bt = add_backtrack_token(model, tokenizer)
    before = model.get_input_embeddings().weight[bt].detach().clone()
    peft_model = with_adapter(model, lora_config(LoraParams(r=2, alpha=4), bt, model))
    ids = tokenizer.encode(f"1 + 1 = 3{tokenizer.convert_ids_to_tokens(bt)}2.")
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, learning_rate=0.1, report_to="none",
                     use_cpu=True, bf16=False, per_device_train_batch_size=1, save_strategy="no")
    SFTTrainer(model=peft_model, args=args, processing_class=tokenizer,
               train_dataset=Dataset.from_list([{"input_ids": ids}])).train()
    merged = peft_model.merge_and_unload()
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    assert not torch.allclose(merged.get_input_embeddings().weight[bt], before)
