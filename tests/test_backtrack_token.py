"""A reachable backtrack token: sft.backtrack.lr_multiplier scales the update of its rows (and only theirs),
and train_sft reports P(backtrack) after a wrong vs a right step before and after training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmhalluc.backtrack.encoding import encode_records
from llmhalluc.backtrack.reach import BacktrackUpdateScale, backtrack_rows, scale_backtrack_update
from llmhalluc.backtrack.token import add_backtrack_token
from llmhalluc.datasets.records import Error, Record, chat_prompt
from llmhalluc.errors import ParamsError
from llmhalluc.lora import lora_config, with_adapter
from llmhalluc.models import load_model_and_tokenizer
from llmhalluc.params import load_section
from llmhalluc.params.sections import LoraParams
from llmhalluc.tiny_model import build_tiny_model
from tests.tiny_project import run, write_params

CORPUS = ["Start with 8. Add 4. 8 + 4 = 12. The answer is 12.", "Start with 3. Add 5. 3 + 5 = 8. The answer is 8."]


def tiny(tmp_path: Path, *, lora: bool) -> tuple:
    """The tiny model (untied, like the built-in one) with the token, and its trainer on two records with errors."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    path = tmp_path / "m"
    if not path.exists():
        build_tiny_model(path, CORPUS * 10, vocab_size=300, hidden_size=32, num_heads=2)
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(str(path))
    bt = add_backtrack_token(model, tokenizer, seed=0)
    records = [Record(id=f"r{a}", question=f"Start with {a}. Add 4.", steps=[f"{a} + 4 = {a + 4}."], answer=str(a + 4),
                      errors=[Error(step=0, text=f"{a} + 4 = {a + 5}.")],
                      prompt=chat_prompt(f"Start with {a}. Add 4.", "Solve.")) for a in (3, 8)]
    examples = encode_records(records, tokenizer, bt, mask_errors=False)[0]
    if lora:
        model = with_adapter(model, lora_config(LoraParams(enabled=True, r=4, alpha=8), bt, model))
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, learning_rate=1e-2, report_to="none",
                     use_cpu=True, bf16=False, per_device_train_batch_size=2, save_strategy="no", seed=0,
                     lr_scheduler_type="constant", max_grad_norm=0.0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    return trainer, bt


def trained_moves(tmp_path: Path, multiplier: float, *, lora: bool) -> tuple[list, dict[str, torch.Tensor]]:
    """How far the backtrack rows moved, and how far every other trainable value moved, over two steps."""
    trainer, bt = tiny(tmp_path, lora=lora)
    rows = backtrack_rows(trainer.model, bt)
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    row_start = [t.detach()[r].clone() for t, r in rows]
    scale_backtrack_update(trainer, bt, multiplier)
    trainer.train()
    row_moves = [t.detach()[r] - old for (t, r), old in zip(rows, row_start, strict=True)]
    others = {}
    for name, p in params.items():
        moved = p.detach() - start[name]
        for t, r in rows:  # blank out the backtrack rows: what is left must move as without the multiplier
            if t is p:
                moved[r] = 0
        others[name] = moved
    return row_moves, others


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_multiplier_scales_the_update_of_the_backtrack_rows_only(tmp_path: Path, lora: bool) -> None:
    plain_rows, plain_others = trained_moves(tmp_path / "m1", 1.0, lora=lora)
    fast_rows, fast_others = trained_moves(tmp_path / "m10", 10.0, lora=lora)
    # Full: the input row and the untied output row; LoRA: the trainable-token delta of each (peft).
    assert len(plain_rows) == 2
    for plain, fast in zip(plain_rows, fast_rows, strict=True):
        ratio = (fast.norm() / plain.norm()).item()
        assert plain.norm() > 0 and 8 < ratio < 12, ratio  # ~10x as far (step 2 starts from a different row)
    assert plain_others.keys() == fast_others.keys()
    for name, moved in plain_others.items():  # the rest moves as far (exactly so after one step, test below)
        if moved.norm() > 0:
            assert 0.8 < (fast_others[name].norm() / moved.norm()).item() < 1.25, name


def test_one_step_is_exactly_m_times(tmp_path: Path) -> None:
    """After one optimiser step the rows moved exactly m times as far and nothing else differs at all."""
    moves = []
    for m in (1.0, 10.0):
        trainer, bt = tiny(tmp_path, lora=False)
        trainer.args.max_steps = 1
        rows = backtrack_rows(trainer.model, bt)
        start = [t.detach()[r].clone() for t, r in rows]
        scale_backtrack_update(trainer, bt, m)
        trainer.train()
        moves.append(([t.detach()[r] - s for (t, r), s in zip(rows, start, strict=True)],
                      {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    (plain, plain_weights), (fast, fast_weights) = moves
    for a, b in zip(plain, fast, strict=True):
        assert torch.allclose(b, 10 * a, rtol=1e-4, atol=1e-7)
    for name, weight in plain_weights.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            weight, other = weight.clone(), fast_weights[name].clone()
            weight[bt], other[bt] = 0, 0
            assert torch.equal(weight, other), name
        else:
            assert torch.equal(weight, fast_weights[name]), name


def test_multiplier_one_attaches_nothing(tmp_path: Path) -> None:
    trainer, bt = tiny(tmp_path, lora=False)
    assert scale_backtrack_update(trainer, bt, 1.0) is None
    assert not [c for c in trainer.callback_handler.callbacks if isinstance(c, BacktrackUpdateScale)]


def test_tied_model_has_one_row_to_scale(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = build_tiny_model(tmp_path / "m", CORPUS * 10, vocab_size=300, hidden_size=32, num_heads=2)
    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config)
    _, tokenizer = load_model_and_tokenizer(str(path))
    bt = add_backtrack_token(model, tokenizer)
    [(weight, rows)] = backtrack_rows(model, bt)
    assert weight is model.get_input_embeddings().weight and rows == [bt]
    peft_model = with_adapter(model, lora_config(LoraParams(enabled=True, r=2, alpha=4), bt, model))
    [(delta, rows)] = backtrack_rows(peft_model, bt)
    assert "trainable_tokens_delta" in next(n for n, p in peft_model.named_parameters() if p is delta)
    assert rows == [0]


@pytest.mark.parametrize("engine", ["is_deepspeed_enabled", "is_fsdp_enabled"])
def test_sharded_training_refuses_a_multiplier(engine: str) -> None:
    trainer = SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=False)
    setattr(trainer, engine, True)
    with pytest.raises(ParamsError, match=r"sft\.backtrack\.lr_multiplier"):
        scale_backtrack_update(trainer, 5, 4.0)
    assert scale_backtrack_update(trainer, 5, 1.0) is None  # 1: nothing to do, so nothing to refuse


@pytest.mark.parametrize(("key", "value"), [("lr_multiplier", 0), ("lr_multiplier", -1.0),
                                            ("report_problems", -1)])
def test_bad_backtrack_keys_are_params_errors(tmp_path: Path, key: str, value: float) -> None:
    path = write_params(tmp_path, {f"sft.backtrack.{key}": value})
    with pytest.raises(ParamsError, match=rf"sft\.backtrack\.{key}: must be"):
        load_section("sft", path, for_run=False)


def test_multiplier_takes_an_integer(tmp_path: Path) -> None:
    section = load_section("sft", write_params(tmp_path, {"sft.backtrack.lr_multiplier": 10}), for_run=False)
    assert section.project.backtrack.lr_multiplier == 10


# --------------------------------------------------------------------------- reachability in train_sft


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    run("prepare", "prepare", folder, {"prepare.backtrack.error_rate": 0.5})
    return folder / "data"


@pytest.mark.parametrize(("unit", "lora", "multiplier"), [("token", False, 1.0), ("step", True, 10.0)])
def test_reachability_before_and_after_in_lineage_and_metrics(tmp_path: Path, prepared: Path, unit: str,
                                                              lora: bool, multiplier: float) -> None:
    shutil.copytree(prepared, tmp_path / "data")
    run("train_sft", "sft", tmp_path, {"sft.backtrack.unit": unit, "sft.lora.enabled": lora, "sft.max_steps": 3,
                                       "sft.backtrack.lr_multiplier": multiplier, "sft.backtrack.report_problems": 4})
    lineage = json.loads((tmp_path / "models/sft/lineage.json").read_text())
    reach = lineage["backtrack_reachability"]
    assert reach.keys() == {"before", "after"}
    for moment in reach.values():
        assert moment.keys() == {"items", "p_after_wrong", "p_after_right", "rank_after_wrong_median"}
        assert moment["items"] >= 4 and 0 < moment["p_after_wrong"] < 1 and moment["rank_after_wrong_median"] >= 1
    assert reach["before"] != reach["after"]
    metrics = json.loads((tmp_path / "dvclive/train_sft/metrics.json").read_text())
    assert metrics["backtrack_reachability"] == reach  # `dvc metrics show` lists both
    assert metrics["step"] == 3 and "loss" in metrics["train"]


def test_report_off(tmp_path: Path, prepared: Path) -> None:
    shutil.copytree(prepared, tmp_path / "data")
    run("train_sft", "sft", tmp_path, {"sft.max_steps": 1, "sft.backtrack.report_problems": 0})
    assert "backtrack_reachability" not in json.loads((tmp_path / "models/sft/lineage.json").read_text())
    assert "backtrack_reachability" not in json.loads((tmp_path / "dvclive/train_sft/metrics.json").read_text())


def test_next_token_stats_ranks_the_token(tmp_path: Path) -> None:
    """with_rank adds the token's rank among all next ids (1 = the argmax), as a plain forward pass ranks it."""
    from llmhalluc import diagnostics

    folder = build_tiny_model(tmp_path / "m", CORPUS * 10, vocab_size=300, hidden_size=32, num_heads=2)
    model, tokenizer = load_model_and_tokenizer(str(folder))
    bt = add_backtrack_token(model, tokenizer)
    model.eval()
    sequences = [tokenizer.encode(t, add_special_tokens=False) for t in ("Start with 8. Add 4.", "3 + 5 = 9.")]
    ends = [[2, len(sequences[0])], [len(sequences[1])]]
    ranked = diagnostics.next_token_stats(model, sequences, ends, token_id=bt, batch_size=2, pad_id=0, with_rank=True)
    plain = diagnostics.next_token_stats(model, sequences, ends, token_id=bt, batch_size=2, pad_id=0)
    assert [[(p, a) for p, a, _ in row] for row in ranked] == plain  # callers without ranks see the same
    for sequence, row_ends, row in zip(sequences, ends, ranked, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([sequence])).logits[0]
        for n, (_, argmax, rank) in zip(row_ends, row, strict=True):
            assert rank == 1 + int((logits[n - 1] > logits[n - 1, bt]).sum())
            assert (rank == 1) == (argmax == bt)
    # The argmax itself ranks first.
    top = diagnostics.next_token_stats(model, sequences[:1], ends[:1], token_id=ranked[0][0][1], batch_size=1,
                                       pad_id=0, with_rank=True)
    assert top[0][0][2] == 1


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"])
def test_multiplier_under_a_sharding_launcher_is_a_params_error(tmp_path: Path, config: str, monkeypatch) -> None:
    """Refused at load time, before any model is loaded (the trainer check is the backstop)."""
    from llmhalluc.params import checks

    monkeypatch.setattr(checks, "_accelerate_config", lambda section: [])  # no GPU / DeepSpeed needed here
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parent.parent / "configs")
    monkeypatch.chdir(tmp_path)
    edits = {"sft.launcher.kind": "accelerate", "sft.launcher.num_processes": 2,
             "sft.launcher.config_file": f"configs/accelerate/{config}"}
    with pytest.raises(ParamsError, match=r"sft\.backtrack\.lr_multiplier: 4\.0 is not supported under"):
        load_section("sft", write_params(tmp_path, {**edits, "sft.backtrack.lr_multiplier": 4.0}), for_run=False)
    load_section("sft", write_params(tmp_path, edits), for_run=False)  # 1.0 is fine there
