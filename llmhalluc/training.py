"""What both trainers share: seeding and the LoRA config.

Kept apart from the stage scripts so SFT and GRPO build their adapters the same way.
"""

from __future__ import annotations

from typing import Any

from llmhalluc.params.sections import LoraParams


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (transformers' set_seed), so CPU runs repeat exactly."""
    from transformers import set_seed

    set_seed(seed, deterministic=False)


def lora_config(params: LoraParams, backtrack_id: int) -> Any:
    """A peft LoraConfig that also trains the backtrack token's rows.

    `trainable_token_indices` makes peft train (and save with the adapter) just
    the new token's embedding row, so its initialisation and what training
    learned both survive into the adapter and the merged model.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices=[backtrack_id],
    )
