"""Helping training reach the backtrack token: a larger step for its rows (SFT), a bias on its logit in rollouts (GRPO).

A new token starts far from being emitted, and training can only move what it sees: SFT gives its
one row a small share of each step, and GRPO can only reinforce a token its rollouts produce.
sft.backtrack.lr_multiplier scales each optimiser step's move of the token's rows;
grpo.rollout_backtrack_bias adds to its logit while rollouts are sampled, and nowhere else. Both
are off by default. How reachable the token is, is measured by llmhalluc.diagnostics (Reachability).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from llmhalluc.errors import ParamsError
from llmhalluc.params.sections import ROLLOUT_BIAS_KEY

# --------------------------------------------------------------------------- the backtrack rows' update


def backtrack_rows(model: Any, backtrack_id: int) -> list[tuple[Any, list[int]]]:
    """The trainable tensors that hold the backtrack token's rows, each with the indexes of those rows.

    Full fine-tuning: row backtrack_id of the input embedding and of an untied output
    projection (a tied model has the one matrix). LoRA (peft's trainable tokens, see
    lora_config): the `trainable_tokens_delta` of each wrapped embedding, whose rows follow the
    layer's `token_indices`; a tied output layer shares its delta with the input one, so each
    tensor is listed once.
    """
    found: dict[int, tuple[Any, list[int]]] = {}
    for module in model.modules():
        deltas, indices = getattr(module, "trainable_tokens_delta", None), getattr(module, "token_indices", None)
        if deltas is None or indices is None:
            continue
        for adapter, delta in deltas.items():
            rows = [row for row, token in enumerate(indices.get(adapter, [])) if token == backtrack_id]
            if rows and delta.requires_grad:
                found.setdefault(id(delta), (delta, rows))
    if found:
        return list(found.values())
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        if layer is not None and layer.weight.requires_grad:
            found.setdefault(id(layer.weight), (layer.weight, [backtrack_id]))
    return list(found.values())


def scale_backtrack_update(trainer: Any, backtrack_id: int, multiplier: float) -> Any:
    """Make each optimiser step move the backtrack token's rows `multiplier` times as far (1: attach nothing).

    A new token starts far from being emitted (a mean-initialised row on SmolLM2-135M:
    P ~1e-9 after an error) and its one row gets a small share of each step. Scaling its
    gradient would not help: Adam divides the gradient by its running scale, so the
    *update* is what is scaled: the rows are remembered just before optimizer.step() and
    set to old + m * (new - old) right after it (the Trainer calls on_optimizer_step
    before zero_grad and the scheduler). A skipped step (fp16 overflow) moves nothing,
    so there is nothing to scale.

    Under DeepSpeed (the engine's optimizer keeps its own master copy of the weights and
    ZeRO-3 shards them) or FSDP (sharded rows) an edit of the module's rows would be lost
    or partial, so m != 1 is refused there rather than silently doing nothing.
    """
    if multiplier == 1:
        return None
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        engine = "DeepSpeed" if trainer.is_deepspeed_enabled else "FSDP"
        raise ParamsError(f"sft.backtrack.lr_multiplier {multiplier}: scaling the backtrack rows' update is not "
                         f"supported under {engine} (the optimiser's copy of the rows is sharded or kept apart); "
                         "set sft.backtrack.lr_multiplier: 1.0 or train without it")
    rows = backtrack_rows(trainer.model, backtrack_id)
    if not rows:
        raise ParamsError(f"sft.backtrack.lr_multiplier {multiplier}: no trainable row of token id {backtrack_id} "
                         "in the model")
    callback = BacktrackUpdateScale(rows, multiplier)
    trainer.add_callback(callback)
    return callback


class BacktrackUpdateScale(TrainerCallback):
    """row = old + m * (new - old) around each optimizer.step() (see scale_backtrack_update)."""

    def __init__(self, rows: list[tuple[Any, list[int]]], multiplier: float) -> None:
        self.rows, self.multiplier = rows, multiplier
        self._before: list[Any] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        self._before = [tensor.detach()[rows].clone() for tensor, rows in self.rows]

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        import torch

        with torch.no_grad():
            for (tensor, rows), old in zip(self.rows, self._before, strict=True):
                new = tensor[rows]
                tensor[rows] = old + self.multiplier * (new - old)
        self._before = []


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
