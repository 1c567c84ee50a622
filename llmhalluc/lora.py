"""LoRA training: the adapter config that also trains the backtrack token's rows, and saves that hold the adapter alone.

SFT and GRPO build their adapters here, the same way; an adapter folder is loaded back (and
merged) by llmhalluc.models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmhalluc.params.sections import LoraParams
from llmhalluc.trl_compat import expose_head_bias, peft_spelling_quiet


def embedding_module_names(model: Any) -> dict[str, str]:
    """Qualified names of the input and (untied) output embedding modules, e.g. model.embed_tokens, lm_head."""
    modules = {id(m): name for name, m in model.named_modules()}
    names = {"input": modules[id(model.get_input_embeddings())]}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        names["output"] = modules[id(output)]
    return names


def lora_config(params: LoraParams, backtrack_id: int, model: Any) -> Any:
    """A peft LoraConfig that also trains the backtrack token's input and output rows.

    peft's trainable tokens train (and save with the adapter) just the listed rows of the
    named modules. The dict form names both the input embedding and, for an untied model
    (the built-in one), the output projection — the list form would train only the input
    row, and the token's output row (what makes the model *emit* it) would stay at its
    initialisation. A tied model has one matrix, so naming the input is enough (peft ties it).
    """
    from peft import LoraConfig

    names = embedding_module_names(model)
    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices={name: [backtrack_id] for name in names.values()},
    )


def save_adapter(peft_model: Any, folder: str | Path) -> None:
    """Write only the adapter (LoRA + the trainable token rows), never the resized full embeddings.

    peft's "auto" would save both whole embedding matrices because the vocabulary grew by
    one; the trainable tokens already carry the new rows, and the rest equals the base.
    """
    peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)


def _checkpoints_save_adapter_only(peft_model: Any) -> None:
    """Make every save of this peft model (the Trainer's checkpoints too) write the adapter alone.

    The Trainer checkpoints through ``model.save_pretrained(dir, state_dict=...)`` with peft's
    ``save_embedding_layers="auto"``, which saves both whole embedding matrices whenever the
    vocabulary grew (it always does: the backtrack token) and warns at every save: 246 MB per
    SmolLM2-135M checkpoint for a 19.6 MB adapter. The trainable tokens already hold the only
    rows that change, and resuming loads the adapter onto the same base, so the matrices are
    dead weight. An explicit ``save_embedding_layers`` still wins.
    """
    save = peft_model.save_pretrained

    def save_pretrained(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("save_embedding_layers", False)
        kwargs.setdefault("safe_serialization", True)
        return save(*args, **kwargs)

    peft_model.save_pretrained = save_pretrained


def with_adapter(model: Any, config: Any) -> Any:
    """Wrap `model` in a trainable peft model, ready for TRL's fused LM head (trl_compat.expose_head_bias)."""
    from peft import get_peft_model

    with peft_spelling_quiet():
        peft_model = get_peft_model(model, config)
    _checkpoints_save_adapter_only(peft_model)
    expose_head_bias(peft_model)
    return peft_model
