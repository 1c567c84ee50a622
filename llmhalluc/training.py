"""What both trainers share before training: seeding, the LoRA config, the adapter and how it is saved.

Kept apart from the stage scripts so SFT and GRPO build adapters the same way; the resumable fit
and the publishing of the trained model are in llmhalluc/trainers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmhalluc.params.sections import ROLLOUT_BIAS_KEY, LoraParams
from llmhalluc.trl_compat import expose_head_bias, peft_spelling_quiet


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (transformers' set_seed), so CPU runs repeat exactly."""
    from transformers import set_seed

    set_seed(seed, deterministic=False)


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


# --------------------------------------------------------------------------- GRPO rollouts

def rollout_bias_kwargs(bias: float, backtrack_id: int, *, use_vllm: bool) -> dict[str, Any]:
    """The GRPOConfig.generation_kwargs entry that adds `bias` to the backtrack token's logit in rollouts ({} at 0).

    TRL 1.16 merges generation_kwargs last into what samples rollouts and nothing else: on the
    transformers path into the trainer's own GenerationConfig (`GRPOTrainer.generation_config`,
    passed to `generate`; the model's `generation_config`, the one save_model writes, is not
    touched), where `sequence_bias` ([[ids], bias], the list form transformers 5 expects) adds the
    bias to the logit before temperature, so at temperature T the token's log-odds move by bias/T;
    on the vLLM path into SamplingParams (colocate) or the request (server), where `logit_bias`
    ({id: bias}) does the same. Eval builds its own decoding options and never reads grpo.*.

    Off-policy by the bias: rollouts come from the biased sampler, but the loss's log-probabilities
    are the policy's own (a forward pass at temperature T, without the bias). On the transformers
    path TRL's importance ratio is policy / old policy, both forward passes without the bias (it is
    exactly 1 on the first pass over a batch), so nothing corrects for the bias: the gradient treats
    biased samples as the policy's, which is what makes a rare token's group-relative advantage
    reach its logit at all, and also what biases the estimate. With vLLM and TRL's
    vllm_importance_sampling_correction (on by default), the correction's sampler log-probabilities
    are vLLM's processed log-probs (TRL starts colocated vLLM with logprobs_mode processed_logprobs);
    if vLLM applies logit_bias before it reports them (not checked here: vLLM is not installed),
    the ratio policy / biased sampler down-weights or masks (vllm_importance_sampling_mode, clip
    bounds) exactly the completions the bias made likely, undoing much of its effect.
    """
    if not bias:
        return {}
    if use_vllm:
        return {ROLLOUT_BIAS_KEY[True]: {int(backtrack_id): float(bias)}}
    return {ROLLOUT_BIAS_KEY[False]: [[[int(backtrack_id)], float(bias)]]}


def with_rollout_bias(config: Any, bias: float, backtrack_id: int) -> Any:
    """config (a GRPOConfig) with the rollout bias merged into its generation_kwargs (the params layer
    refused a user entry under the same key), so the resolved params record it as the trainer got it."""
    extra = rollout_bias_kwargs(bias, backtrack_id, use_vllm=config.use_vllm)
    if extra:
        config.generation_kwargs = {**(config.generation_kwargs or {}), **extra}
    return config
