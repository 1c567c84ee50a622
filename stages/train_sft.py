"""train_sft: params.yaml[sft] + data/prepared/sft.jsonl -> models/sft (+ metrics/train_sft.json).

Reads top to bottom: params, model and backtrack token, data to ids, train, save.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.backtrack import encode_example
from llmhalluc.datasets.records import read_jsonl
from llmhalluc.params import Section, resolved, trl_config, write_resolved
from llmhalluc.stage import run_stage, staged_output
from llmhalluc.tracking import write_curve

METRICS = Path("metrics/train_sft.json")
PLOT = Path("plots/train_sft/loss.csv")


def main(section: Section) -> None:
    import torch
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from llmhalluc import models
    from llmhalluc.training import lora_config, seed_everything

    p = section.project
    config = trl_config(section)
    seed_everything(config.seed)
    records = read_jsonl(Path(p.data_dir) / "sft.jsonl")

    # The model. The built-in one is built from the seed and saved first, so it is loaded like any other.
    name = p.model_name_or_path
    base_dir = Path(config.output_dir) / "base"
    if models.is_builtin(name):
        corpus = [r.question for r in records] + [r.solution() for r in records]
        corpus += [e.text for r in records for e in r.errors]
        t = p.tiny_model
        models.build_tiny_model(base_dir, corpus, vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                num_layers=t.num_layers, num_heads=t.num_heads,
                                intermediate_size=t.intermediate_size, seed=t.seed)
        name = str(base_dir)
    model, tokenizer = models.load_model_and_tokenizer(
        name, dtype=p.dtype, attn_implementation=None if p.attn_implementation == "auto" else p.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    backtrack_id = models.add_backtrack_token(model, tokenizer, p.backtrack.token, p.backtrack.init,
                                              noise_std=p.backtrack.noise_std, seed=config.seed)

    # Data to ids, segment by segment: N error tokens are followed by exactly N backtracks.
    end_ids = tokenizer.encode(tokenizer.eos_token + "\n", add_special_tokens=False)
    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    examples = []
    for r in records:
        prompt_ids = tokenizer.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        examples.append(encode_example(prompt_ids, r.steps, f"The answer is {r.answer}.",
                                       [(e.step, e.text) for e in r.errors], tokenize, backtrack_id,
                                       end_ids[:1], mask_errors=p.mask_errors))
    dataset = Dataset.from_list(examples)

    peft_config = lora_config(p.lora, backtrack_id) if p.lora.enabled else None
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)

    with staged_output(p.model_dir) as staging:
        if p.lora.enabled:
            trainer.model = trainer.model.merge_and_unload()
        trainer.model.to(torch.float32).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_resolved(resolved(section, config), staging)
        (staging / "lineage.json").write_text(json.dumps(
            {"stage": "train_sft", "base": p.model_name_or_path, "backtrack_token": p.backtrack.token,
             "backtrack_id": backtrack_id}, indent=2) + "\n")
    write_curve(PLOT, trainer.state.log_history, "loss")
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps({"train_loss": round(result.training_loss, 6),
                                   "steps": result.global_step}, indent=2) + "\n")
    print(f"train_sft: {result.global_step} steps, loss {result.training_loss:.4f} -> {p.model_dir}")


if __name__ == "__main__":
    run_stage("sft", main, resolved)
