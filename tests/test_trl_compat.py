"""The private parts of TRL / transformers / peft that llmhalluc.trl_compat relies on are still there.

Each test reads the installed library (its source, or a tiny object) and fails when an upgrade
changes the internal, naming the trl_compat function to re-check.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest
import torch

from llmhalluc import trl_compat


@pytest.mark.parametrize("package", sorted(trl_compat.CHECKED))
def test_installed_versions_are_the_checked_ones(package: str) -> None:
    installed = importlib.metadata.version(package)
    assert installed == trl_compat.CHECKED[package], (
        f"{package} {installed} is installed, llmhalluc/trl_compat.py was checked against "
        f"{trl_compat.CHECKED[package]}: re-read each function there against it, then update CHECKED")


def test_dvclive_setup_is_skipped_by_the_initialized_flag() -> None:
    from transformers.integrations import DVCLiveCallback

    setup = inspect.getsource(DVCLiveCallback.setup)
    assert "self._initialized = True" in setup and "log_params" in setup  # the params dump skip_dvclive_setup avoids
    for hook in (DVCLiveCallback.on_train_begin, DVCLiveCallback.on_log):
        assert "if not self._initialized" in inspect.getsource(hook), f"{hook.__qualname__}: skip_dvclive_setup"


def test_checkpoint_saves_write_the_card_through_create_model_card() -> None:
    from trl import GRPOTrainer, SFTTrainer

    for trainer in (SFTTrainer, GRPOTrainer):
        source = inspect.getsource(trainer._save_checkpoint)
        assert "self.create_model_card(" in source, f"{trainer.__name__}: trl_compat.skip_checkpoint_card"


def test_grpo_completions_log_has_the_keys_read() -> None:
    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer)
    assert "self._logs = {" in source, "GRPOTrainer._logs is gone: trl_compat.completions_log"
    for key in ("prompt", "rewards", "advantages", "extra"):
        assert f'self._logs["{key}"]' in source, f"GRPOTrainer._logs[{key!r}]: trl_compat.completions_log"


def test_trl_reads_the_head_bias_and_peft_wrapper_lacks_it() -> None:
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import TrainableTokensWrapper
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOTrainer

    assert "lm_head.bias" in inspect.getsource(inspect.getmodule(GRPOTrainer)), "trl_compat.expose_head_bias"
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    with trl_compat.peft_spelling_quiet():
        model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(
            r=2, target_modules=["q_proj"], trainable_token_indices={"embed_tokens": [5], "lm_head": [5]}))
    head = model.get_base_model().get_output_embeddings()
    assert isinstance(head, TrainableTokensWrapper)
    assert not hasattr(head, "bias"), "peft's head wrapper now has .bias: is trl_compat.expose_head_bias still needed?"
    trl_compat.expose_head_bias(model)
    assert head.bias is None
