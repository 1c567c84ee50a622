"""train_grpo: params.yaml[grpo] + models/sft + data/prepared/grpo.jsonl -> models/grpo.

Every grpo.* TRL field reaches GRPOConfig as written (see llmhalluc.params);
what the trainer received is written to models/grpo/resolved_params.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.datasets.records import read_jsonl
from llmhalluc.params import Section, resolved, trl_config, write_resolved
from llmhalluc.stage import run_stage, staged_output
from llmhalluc.tracking import write_curve

METRICS = Path("metrics/train_grpo.json")
PLOT = Path("plots/train_grpo/reward.csv")


def main(section: Section) -> None:
    import torch
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer

    from llmhalluc import models
    from llmhalluc.rewards import build_rewards
    from llmhalluc.training import lora_config, seed_everything

    p = section.project
    config = trl_config(section)
    seed_everything(config.seed)
    records = read_jsonl(Path(p.data_dir) / "grpo.jsonl")

    model, tokenizer = models.load_model_and_tokenizer(p.model_name_or_path, dtype=p.dtype,
                                                       trust_remote_code=config.trust_remote_code)
    lineage_file = Path(p.model_name_or_path) / "lineage.json"
    upstream = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    token = upstream.get("backtrack_token", models.BACKTRACK_TOKEN)
    backtrack_id = tokenizer.convert_tokens_to_ids(token)

    # Conversational prompts as TRL expects; ground truth reaches the rewards as columns.
    dataset = Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "answerable": r.answerable}
                                 for r in records])
    rewards = build_rewards(p.reward_funcs, tokenizer, backtrack_id, p.rewards)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=dataset,
                          processing_class=tokenizer,
                          peft_config=lora_config(p.lora, backtrack_id) if p.lora.enabled else None)
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)

    rewards_logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    with staged_output(p.model_dir) as staging:
        if p.lora.enabled:
            trainer.model = trainer.model.merge_and_unload()
        trainer.model.to(torch.float32).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_resolved(resolved(section, config), staging)
        (staging / "lineage.json").write_text(json.dumps(
            {"stage": "train_grpo", "start": p.model_name_or_path, "upstream": upstream,
             "backtrack_token": token, "backtrack_id": backtrack_id}, indent=2) + "\n")
    write_curve(PLOT, trainer.state.log_history, "reward")
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps({
        "steps": result.global_step,
        "reward_first": round(rewards_logged[0], 6) if rewards_logged else None,
        "reward_last": round(rewards_logged[-1], 6) if rewards_logged else None,
    }, indent=2) + "\n")
    print(f"train_grpo: {result.global_step} steps, rewards {rewards_logged} -> {p.model_dir}")


if __name__ == "__main__":
    run_stage("grpo", main, resolved)
