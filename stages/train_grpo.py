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
there (llmhalluc.backtrack.reach.rollout_bias_kwargs: how it reaches TRL, and why the updates are then
off-policy by the bias). grpo.rewards.backtrack.max_backtracks: auto is sized from the SFT data
(llmhalluc.rewards.resolve_max_backtracks); the resolved params hold the number that ran.
"""

from __future__ import annotations

from pathlib import Path

from llmhalluc.backtrack.token import DEFAULT_TOKEN, token_id
from llmhalluc.datasets.records import read_answer_rules, read_jsonl
from llmhalluc.launcher import print_once
from llmhalluc.params import Section, resolved, trl_config
from llmhalluc.rewards import AnswerJudge, build_rewards, resolve_max_backtracks  # grpo's reward_names, too
from llmhalluc.stage import run_stage

LIVE_DIR = Path("dvclive/train_grpo")  # declared in dvc.yaml (metrics + plots + completions tables)


def main(section: Section) -> None:
    from dataclasses import replace

    from datasets import Dataset
    from trl import GRPOTrainer

    from llmhalluc import checkpoints, lineage, models, tracking
    from llmhalluc.backtrack.reach import with_rollout_bias
    from llmhalluc.backtrack.retraction import unit_of
    from llmhalluc.errors import DataError
    from llmhalluc.lora import lora_config, with_adapter
    from llmhalluc.rng import seed_everything
    from llmhalluc.training_run import Run, fit, publish

    p = section.project
    config = trl_config(section)
    seed_everything(config.seed)
    data_file = Path(p.data_dir) / "grpo.jsonl"
    records = read_jsonl(data_file)
    answers = read_answer_rules(p.data_dir)  # prepare's answer pattern and abstain phrase: eval judges by the same

    # The start point, and what SFT recorded of it: the backtrack token, its unit, the lengths it trained on.
    start = lineage.Lineage.read(p.model_name_or_path)
    # The backtrack reward's cap sized from SFT's data (max_backtracks: auto), apart from the validated params.
    options = resolve_max_backtracks(p.rewards, start.lengths, needed="backtrack" in p.reward_funcs)
    model, tokenizer = models.load_model_and_tokenizer(start.folder, dtype=p.dtype,
                                                       trust_remote_code=config.trust_remote_code)
    token = start.backtrack_token or DEFAULT_TOKEN
    backtrack_id = token_id(tokenizer, token)
    if backtrack_id is None:
        raise DataError(f"{start.folder}: the tokenizer has no {token!r} token; start GRPO from the SFT stage's out")
    start.warn_if_cut(config.max_completion_length, "grpo.max_completion_length", log=print_once)

    # What runs is what is recorded: the rollout-only backtrack bias (as TRL samples with it), max_backtracks.
    config = with_rollout_bias(config, p.rollout_backtrack_bias, backtrack_id)
    params = resolved(replace(section, project=replace(p, rewards=options)), config)

    # Conversational prompts as TRL expects; ground truth reaches the rewards as columns.
    dataset = Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "answerable": r.answerable} for r in records])
    unit = unit_of(start)  # rewards resolve completions as the start model was trained to retract
    rewards = build_rewards(p.reward_funcs, tokenizer, backtrack_id, options, unit=unit, answers=answers)
    rewards[0] = tracking.observe_completions(rewards[0], tokenizer, backtrack_id, unit=unit,
                                              judge=AnswerJudge(pattern=answers.pattern, abstain=answers.abstain))

    if p.lora.enabled:
        model = with_adapter(model, lora_config(p.lora, backtrack_id, model))
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    data = lineage.data_record(data_file)
    identity = {"data": data["sha256"], "start": checkpoints.model_identity(start.folder)}  # a new SFT model: a new run
    run = Run("train_grpo", config, params, identity, LIVE_DIR)
    result, shards = fit(trainer, run, completions=True)

    publish(trainer, tokenizer, run, p.model_dir, lora=p.lora.enabled, adapter_base=start.folder, shards=shards,
            record=start.child(p.model_dir, data=data, token=token, token_id=backtrack_id, unit=unit,
                               vocab_rows=models.vocab_rows(trainer.model),
                               rollout_backtrack_bias=p.rollout_backtrack_bias))  # of the rollouts, never the model
    print(f"train_grpo: {result.global_step} steps, {config.num_generations} generations per prompt, "
          f"max_completion_length {config.max_completion_length} -> {p.model_dir}")


if __name__ == "__main__":
    run_stage("grpo", main, resolved)
