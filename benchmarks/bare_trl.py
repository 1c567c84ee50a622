"""The baseline of the stage-overhead benchmark: TRL alone, doing what train_sft / train_grpo do.

    python benchmarks/bare_trl.py sft   # in a workspace where `dvc repro train_sft` has run
    python benchmarks/bare_trl.py grpo

Same model, same prepared data, same steps, batch size and learning rate (read
from the resolved params the stage wrote), and no params layer, lineage,
checkpoint fingerprints or DVCLive. The SFT baseline hands TRL prompt/completion
conversations and lets it tokenise; the GRPO one uses the project's reward
functions (the rewards are part of the work, not of the overhead).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.datasets.records import read_jsonl

KEEP = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps", "seed",
        "max_length", "num_generations", "max_completion_length", "temperature", "beta", "loss_type",
        "scale_rewards", "reward_weights", "logging_steps", "use_cpu")


def _args(resolved: dict) -> dict:
    trl = resolved.get("trl", resolved)
    return {k: trl[k] for k in KEEP if k in trl and trl[k] is not None}


def sft(out: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    resolved = json.loads(Path("models/sft/resolved_params.json").read_text())
    start = "models/sft/base" if Path("models/sft/base").is_dir() else resolved["model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained("models/sft")
    model = AutoModelForCausalLM.from_pretrained(start)
    model.resize_token_embeddings(len(tokenizer))
    data = Dataset.from_list([{"prompt": r.prompt, "completion": [{"role": "assistant", "content": r.solution()}]}
                              for r in read_jsonl("data/prepared/sft.jsonl")])
    config = SFTConfig(output_dir=out, report_to="none", save_strategy="no", **_args(resolved))
    SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer).train()
    model.save_pretrained(Path(out) / "model")


def grpo(out: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from llmhalluc.params.sections import RewardsParams
    from llmhalluc.rewards import build_rewards

    resolved = json.loads(Path("models/grpo/resolved_params.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained("models/sft")
    model = AutoModelForCausalLM.from_pretrained("models/sft")
    data = Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "answerable": r.answerable}
                              for r in read_jsonl("data/prepared/grpo.jsonl")])
    names = resolved["reward_funcs"]
    rewards = build_rewards(names, tokenizer, tokenizer.convert_tokens_to_ids("<|backtrack|>"), RewardsParams())
    config = GRPOConfig(output_dir=out, report_to="none", save_strategy="no", **_args(resolved))
    GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=data,
                processing_class=tokenizer).train()
    model.save_pretrained(Path(out) / "model")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        {"sft": sft, "grpo": grpo}[sys.argv[1]](tmp)
