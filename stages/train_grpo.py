"""train_grpo: params.yaml[grpo] + models/sft + data/prepared/grpo.jsonl -> models/grpo (+ dvclive/train_grpo).

Every grpo.* TRL field reaches GRPOConfig as written (see llmhalluc.params); what the
trainer received is written to models/grpo/resolved_params.json.

Start point: the SFT model as models/sft records it, loaded as plain weights — an SFT
LoRA adapter is merged into its base in memory (exact: LoRA is additive). With
grpo.lora.enabled, GRPO then trains its *own* adapter (plus the backtrack token's rows)
on those weights, and models/grpo holds only that adapter; its lineage names models/sft
as the parent, so merge (and llmhalluc.models.load_model_and_tokenizer) rebuild
base -> SFT -> GRPO exactly. Without LoRA, models/grpo holds full weights.

grpo.rollout_backtrack_bias adds to the backtrack token's logit while rollouts are sampled, and only
there (llmhalluc.training.rollout_bias_kwargs: how it reaches TRL, and why the updates are then
off-policy by the bias). grpo.rewards.backtrack.max_backtracks: auto is sized from the SFT data
(llmhalluc.rewards.resolve_max_backtracks); the resolved params hold the number that ran.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmhalluc.backtrack import DEFAULT_TOKEN
from llmhalluc.datasets.records import read_answer_rules, read_jsonl
from llmhalluc.launcher import print_once
from llmhalluc.params import Section, resolved, trl_config
from llmhalluc.rewards import AnswerJudge, build_rewards, resolve_max_backtracks  # grpo's reward_names, too
from llmhalluc.stage import run_stage

LIVE_DIR = Path("dvclive/train_grpo")  # declared in dvc.yaml (metrics + plots + completions tables)


def main(section: Section) -> None:
    from datasets import Dataset
    from trl import GRPOTrainer

    from llmhalluc import lineage, models, tracking
    from llmhalluc.backtrack import unit_of
    from llmhalluc.errors import DataError
    from llmhalluc.trainers import fit, publish
    from llmhalluc.training import lora_config, seed_everything, with_adapter, with_rollout_bias

    p = section.project
    config = trl_config(section)
    seed_everything(config.seed)
    data_file = Path(p.data_dir) / "grpo.jsonl"
    records = read_jsonl(data_file)
    answers = read_answer_rules(p.data_dir)  # prepare's answer pattern and abstain phrase: eval judges by the same

    # The start point, and the backtrack token as SFT recorded it.
    start = p.model_name_or_path
    upstream = lineage.read_lineage(start) if Path(start).is_dir() else None
    # The backtrack reward's cap sized from SFT's data (max_backtracks: auto), before any model loads.
    p.rewards = resolve_max_backtracks(p.rewards, lineage.trained_lengths(upstream),
                                       needed="backtrack" in p.reward_funcs)
    model, tokenizer = models.load_model_and_tokenizer(start, dtype=p.dtype,
                                                       trust_remote_code=config.trust_remote_code)
    token = upstream["backtrack_token"] if upstream else DEFAULT_TOKEN
    backtrack_id = tokenizer.convert_tokens_to_ids(token)
    if backtrack_id is None or backtrack_id == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
        raise DataError(f"{start}: the tokenizer has no {token!r} token; start GRPO from the SFT stage's out")

    lineage.warn_if_cut(upstream, config.max_completion_length, "grpo.max_completion_length", log=print_once)

    # What runs is what is recorded: the rollout-only backtrack bias as the generation_kwargs entry the trainer
    # samples with, and the resolved max_backtracks.
    config = with_rollout_bias(config, p.rollout_backtrack_bias, backtrack_id)
    params = resolved(section, config)

    # Conversational prompts as TRL expects; ground truth reaches the rewards as columns.
    dataset = Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "answerable": r.answerable}
                                 for r in records])
    unit = unit_of(upstream)  # rewards resolve completions as the start model was trained to retract
    rewards = build_rewards(p.reward_funcs, tokenizer, backtrack_id, p.rewards, unit=unit, answers=answers)
    rewards[0] = tracking.observe_completions(rewards[0], tokenizer, backtrack_id, unit=unit,
                                              judge=AnswerJudge(pattern=answers.pattern, abstain=answers.abstain))

    if p.lora.enabled:
        model = with_adapter(model, lora_config(p.lora, backtrack_id, model))
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    data = lineage.data_record(data_file)
    result, shards = fit(trainer, config, params, {"data": data["sha256"], "start": _model_hash(start)}, LIVE_DIR,
                         "train_grpo", completions=LIVE_DIR / "completions")

    base = dict(upstream["base"]) if upstream else lineage.base_record(start)
    if upstream and base.get("path"):  # re-point the base copy from models/sft's folder to this one
        base["path"] = os.path.relpath(Path(start) / base["path"], p.model_dir)
    publish(trainer, tokenizer, config, params, p.model_dir, "train_grpo", lora=p.lora.enabled, adapter_base=start,
            shards=shards, record={
                "backtrack_token": token, "backtrack_id": backtrack_id, "retraction": {"unit": unit},
                "rollout_backtrack_bias": p.rollout_backtrack_bias,  # of the rollouts only, never of this model
                "vocab_rows": (trainer.model.get_base_model() if p.lora.enabled else trainer.model)
                .get_input_embeddings().weight.shape[0],
                "base": base, "parent": {"path": start, "lineage": upstream}, "data": data})
    print(f"train_grpo: {result.global_step} steps, {config.num_generations} generations per prompt, "
          f"max_completion_length {config.max_completion_length} -> {p.model_dir}")


def _model_hash(folder: str) -> str:
    """The start model's identity for the resume fingerprint: a new SFT model means a new run."""
    from llmhalluc.lineage import file_sha256

    path = Path(folder)
    if not path.is_dir():
        return folder
    files = sorted(f for f in path.rglob("*.safetensors"))
    return ",".join(f"{f.relative_to(path)}:{file_sha256(f)}" for f in files)


if __name__ == "__main__":
    run_stage("grpo", main, resolved)
