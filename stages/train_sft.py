"""train_sft: params.yaml[sft] + data/prepared/sft.jsonl -> models/sft (+ DVCLive curves in dvclive/train_sft).

Reads top to bottom: params, model and backtrack token, data to ids, train (resumable; the token's
reach measured before and after), save.
models/sft holds full weights, or (sft.lora.enabled) a LoRA adapter whose trainable tokens
carry the backtrack token's input and output rows; lineage.json says which, and how to
rebuild the base (the built-in base is saved inside, in models/sft/base).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# This checkout's llmhalluc, not the installed one: `dvc exp run --queue` runs each experiment in a
# temporary copy (.dvc/tmp/exps/...) while the editable install points at the original checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.backtrack import encode_example, retraction_for
from llmhalluc.datasets.records import read_jsonl
from llmhalluc.errors import DataError
from llmhalluc.launcher import is_main_process, print_once
from llmhalluc.params import Section, resolved, trl_config
from llmhalluc.stage import run_stage

LIVE_DIR = Path("dvclive/train_sft")  # declared in dvc.yaml (metrics + plots)


def main(section: Section) -> None:
    from datasets import Dataset
    from trl import SFTTrainer

    from llmhalluc import diagnostics, lineage, models, tracking
    from llmhalluc.trainers import fit, publish
    from llmhalluc.training import lora_config, scale_backtrack_update, seed_everything, sharded, with_adapter

    p = section.project
    config = trl_config(section)
    params = resolved(section, config)
    seed_everything(config.seed)
    data_file = Path(p.data_dir) / "sft.jsonl"
    records = read_jsonl(data_file)

    # The model. The built-in one is built from the seed and saved first, so it is loaded like any other.
    # Under N processes rank 0 builds it while the others wait, then every rank loads the same folder.
    name, base_dir = p.model_name_or_path, None
    if models.is_builtin(name):
        base_dir = Path(config.output_dir) / "base"
        with config.main_process_first(desc="build the tiny base model"):
            if is_main_process():
                # Clean text only: a tokenizer trained on the injected errors too would change with
                # prepare.backtrack.*, and "same seed" would then be a different starting model.
                corpus = [r.question for r in records] + [r.solution() for r in records]
                t = p.tiny_model
                models.build_tiny_model(base_dir, corpus, vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                        num_layers=t.num_layers, num_heads=t.num_heads,
                                        intermediate_size=t.intermediate_size, seed=t.seed)
        name = str(base_dir)
    gguf = None
    if p.gguf_file:  # dequantized once into a cache folder keyed by the file's sha256 (rank 0 first)
        with config.main_process_first(desc="dequantize the GGUF base"):
            folder, gguf = models.dequantized_gguf(name, p.gguf_file)
        name = str(folder)
    model, tokenizer = models.load_model_and_tokenizer(
        name, dtype=p.dtype, attn_implementation=None if p.attn_implementation == "auto" else p.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    backtrack_id = models.add_backtrack_token(model, tokenizer, p.backtrack.token, p.backtrack.init,
                                              noise_std=p.backtrack.noise_std, seed=config.seed)
    vocab_rows = model.get_input_embeddings().weight.shape[0]  # what an adapter's base must be resized to
    end_of_turn = models.use_end_of_turn(model, tokenizer)  # targets end as the chat template ends a turn

    # Data to ids, segment by segment: N error tokens are followed by exactly N backtracks.
    examples, prompt_lengths = encode_records(records, tokenizer, backtrack_id, mask_errors=p.mask_errors,
                                              unit=p.backtrack.unit)
    # What GRPO and eval check their limits against, and what grpo.rewards.backtrack.max_backtracks: auto sizes from.
    lengths = lineage.length_record(examples, prompt_lengths, config.max_length, backtrack_id=backtrack_id)
    if lengths["truncated_examples"]:
        print_once(f"warning: sft.max_length {config.max_length} cuts {lengths['truncated_examples']} of "
                   f"{len(examples)} SFT examples (longest {lengths['max_example_tokens']} tokens): their ends, "
                   "answer and end of turn included, are not trained on; raise sft.max_length")
    dataset = Dataset.from_list(examples)

    # Train, resuming the same run's last complete checkpoint if a killed run left one.
    if p.lora.enabled:
        model = with_adapter(model, lora_config(p.lora, backtrack_id, model))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    scale_backtrack_update(trainer, backtrack_id, p.backtrack.lr_multiplier)  # m = 1: nothing attached
    base = lineage.base_record(p.model_name_or_path, saved_as="base" if base_dir else None, loaded_from=name,
                               gguf=gguf)
    data = lineage.data_record(data_file)

    # How reachable the token is (P(backtrack) after a wrong vs right step) as initialised, and after training.
    report = p.backtrack.report_problems > 0 and not sharded(trainer)  # sharded rows: no plain forward pass
    if p.backtrack.report_problems > 0 and not report:
        print_once("note: sft.backtrack.report_problems: P(backtrack) is not measured under ZeRO-3 / FSDP")

    def reachability() -> dict:
        return diagnostics.reachability(trainer.model, tokenizer, records[:p.backtrack.report_problems],
                                        backtrack_id=backtrack_id, unit=p.backtrack.unit, seed=config.seed,
                                        batch_size=config.per_device_eval_batch_size)

    reachable = {"before": reachability()} if report else {}
    result, shards = fit(trainer, config, params, {"data": data["sha256"], "base": base}, LIVE_DIR, "train_sft",
                         summary={"data": {**lengths, "examples": len(examples)},  # truncation in dvc metrics show
                                  **({"backtrack_reachability": reachable} if report else {})})
    if report:
        reachable["after"] = reachability()
        tracking.add_to_summary(LIVE_DIR, {"backtrack_reachability": {"after": reachable["after"]}})

    # A LoRA adapter names its base as a user would load it from the repository root (never a cache
    # folder of this machine: a GGUF base is named as params name it, lineage has the rest).
    publish(trainer, tokenizer, config, params, p.model_dir, "train_sft", lora=p.lora.enabled,
            adapter_base=str(Path(p.model_dir) / "base") if base_dir else p.model_name_or_path,
            extra={"base": base_dir} if base_dir else None, shards=shards, record={
                "backtrack_token": p.backtrack.token, "backtrack_id": backtrack_id,
                "retraction": {"unit": p.backtrack.unit},  # rewards, eval and the probe resolve by it (unit_of)
                "vocab_rows": vocab_rows, "lengths": lengths, "end_of_turn": end_of_turn,
                "base": base, "parent": None, "data": data,
                **({"backtrack_reachability": reachable} if report else {})})
    if base_dir:
        trainer.accelerator.wait_for_everyone()  # every rank has copied the base in publish before it goes
        if is_main_process():
            shutil.rmtree(base_dir)
    print(f"train_sft: {result.global_step} steps, loss {result.training_loss:.4f} -> {p.model_dir}")


def encode_records(records, tokenizer, backtrack_id: int, *, mask_errors: bool,
                   unit: str = "token") -> tuple[list[dict[str, list[int]]], list[int]]:
    """input_ids + labels per record, in the chat template the model will be prompted with, and each prompt's length.

    unit is the retraction unit (sft.backtrack.unit): how many backtracks follow an error, and
    for step / retry a check that each example resolves to its clean completion (DataError naming
    the record otherwise: training on data the unit cannot resolve would teach the wrong thing).

    The labels (-100 off the loss) are what SFTTrainer trains on: a `labels` column is used
    as is (tests/test_train_sft.py checks the collated batch).
    """
    end_ids = tokenizer.encode(tokenizer.eos_token, add_special_tokens=False)  # the end of turn (use_end_of_turn)

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)
    examples, prompt_lengths = [], []
    for r in records:
        prompt_ids = tokenizer.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        prompt_lengths.append(len(prompt_ids))
        try:
            examples.append(encode_example(prompt_ids, r.steps, r.answer_sentence(),
                                           [(e.step, e.text) for e in r.errors], tokenize, backtrack_id,
                                           end_ids, mask_errors=mask_errors, retraction=retraction))
        except ValueError as exc:
            raise DataError(f"sft.backtrack.unit {unit}: record {r.id}: {exc}") from exc
    return examples, prompt_lengths


if __name__ == "__main__":
    run_stage("sft", main, resolved)
