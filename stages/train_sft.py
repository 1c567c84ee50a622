"""train_sft: params.yaml[sft] + data/prepared/sft.jsonl -> models/sft (+ DVCLive curves in dvclive/train_sft).

Reads top to bottom: params, model and backtrack token, data to ids, train (resumable; the token's
reach measured before and after), save.
models/sft holds full weights, or (sft.lora.enabled) a LoRA adapter whose trainable tokens
carry the backtrack token's input and output rows; lineage.json says which, and how to
rebuild the base (the built-in base is saved inside, in models/sft/base).

With sft.own_errors.rate > 0 it trains in two passes of one step budget (sft.max_steps): first
after_steps steps on the records without errors, then a `rate` share of the records gets the
first-pass model's own wrong step as its error (llmhalluc.mining; with sft.own_errors.source:
synthetic a near miss as prepare makes them, the control), and the same weights train the
remaining steps on that mix; the mixed records go into models/sft/own_errors.jsonl.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

from llmhalluc.backtrack import encode_example, retraction_for
from llmhalluc.datasets.records import jsonl_text, read_answer_rules, read_jsonl, read_meta
from llmhalluc.errors import DataError
from llmhalluc.launcher import is_main_process, print_once
from llmhalluc.params import Section, resolved, trl_config
from llmhalluc.stage import run_stage

LIVE_DIR = Path("dvclive/train_sft")  # declared in dvc.yaml (metrics + plots)
CLEAN_DIR = "clean"  # under output_dir: the first pass's checkpoints (sft.own_errors), cleared at the end
OWN_ERRORS_FILE = "own_errors.jsonl"  # in model_dir: the SFT records after mining (sft.own_errors)


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

    if p.lora.enabled:
        model = with_adapter(model, lora_config(p.lora, backtrack_id, model))
    base = lineage.base_record(p.model_name_or_path, saved_as="base" if base_dir else None, loaded_from=name,
                               gguf=gguf)
    data = lineage.data_record(data_file)

    # How reachable the token is (P(backtrack) after a wrong vs right step) as initialised, and after training.
    reachable: dict = {}
    report, probed = p.backtrack.report_problems > 0, records[:p.backtrack.report_problems]  # as prepared

    def reachability(trained) -> dict:
        return diagnostics.reachability(trained, tokenizer, probed,
                                        backtrack_id=backtrack_id, unit=p.backtrack.unit, seed=config.seed,
                                        batch_size=config.per_device_eval_batch_size)

    def start(trainer) -> None:
        """What every pass's trainer gets before it trains; the reach is measured before the first."""
        nonlocal report
        scale_backtrack_update(trainer, backtrack_id, p.backtrack.lr_multiplier)  # m = 1: nothing attached
        if report and "before" not in reachable:
            if sharded(trainer):  # sharded rows: no plain forward pass
                report = False
                print_once("note: sft.backtrack.report_problems: P(backtrack) is not measured under ZeRO-3 / FSDP")
            else:
                reachable["before"] = reachability(trainer.model)

    identity, own, own_summary = {"data": data["sha256"], "base": base}, p.own_errors, None
    if own.rate > 0:  # two passes: clean, then a share of the records with the model's own mistakes
        model, records, own_summary = own_errors_pass(model, tokenizer, records, config, params, identity, own,
                                                      start, backtrack_id=backtrack_id, mask_errors=p.mask_errors,
                                                      unit=p.backtrack.unit,
                                                      answer_pattern=read_answer_rules(p.data_dir).pattern)
        mixed = jsonl_text(records)  # the records pass 2 trains on: hashed into its run identity, and published
        identity = {**identity, "own_errors": hashlib.sha256(mixed.encode()).hexdigest()}
        config = replace(config, max_steps=config.max_steps - own.after_steps)  # equal budget with one pass

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
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    start(trainer)
    summary = {"data": {**lengths, "examples": len(examples)}}  # truncation in dvc metrics show
    if report:
        summary["backtrack_reachability"] = reachable
    if own_summary is not None:  # the mined share too
        summary["own_errors"] = {k: v for k, v in own_summary.items() if k != "examples"}
    result, shards = fit(trainer, config, params, identity, LIVE_DIR, "train_sft", summary=summary,
                         step_offset=own.after_steps if own_summary is not None else 0)
    if report:
        reachable["after"] = reachability(trainer.model)
        tracking.add_to_summary(LIVE_DIR, {"backtrack_reachability": {"after": reachable["after"]}})

    # A LoRA adapter names its base as a user would load it from the repository root (never a cache
    # folder of this machine: a GGUF base is named as params name it, lineage has the rest).
    publish(trainer, tokenizer, config, params, p.model_dir, "train_sft", lora=p.lora.enabled,
            adapter_base=str(Path(p.model_dir) / "base") if base_dir else p.model_name_or_path,
            extra={"base": base_dir} if base_dir else None, shards=shards,
            files={OWN_ERRORS_FILE: mixed} if own_summary is not None else None, record={
                "backtrack_token": p.backtrack.token, "backtrack_id": backtrack_id,
                "retraction": {"unit": p.backtrack.unit},  # rewards, eval and the probe resolve by it (unit_of)
                "vocab_rows": vocab_rows, "lengths": lengths, "end_of_turn": end_of_turn,
                "base": base, "parent": None, "data": data,
                "mistakes": read_meta(p.data_dir).get("mistakes"),  # what the data taught: eval's probe reads the kind
                **({"backtrack_reachability": reachable} if report else {}),
                **({"own_errors": {**own_summary, "file": OWN_ERRORS_FILE}} if own_summary is not None else {})})
    if base_dir:
        trainer.accelerator.wait_for_everyone()  # every rank has copied the base in publish before it goes
        if is_main_process():
            shutil.rmtree(base_dir)
    if is_main_process():
        shutil.rmtree(Path(config.output_dir) / CLEAN_DIR, ignore_errors=True)  # the first pass's, now done
    steps = result.global_step + (own.after_steps if own_summary is not None else 0)
    print(f"train_sft: {steps} steps, loss {result.training_loss:.4f} -> {p.model_dir}")


def own_errors_pass(model, tokenizer, records, config, params: dict, identity: dict, own, start, *,
                    backtrack_id: int, mask_errors: bool, unit: str, answer_pattern: str):
    """Pass 1 of sft.own_errors: after_steps steps on the records without errors (resumable, its checkpoints
    in output_dir/clean), then mining a seeded `rate` share of the records (seed sft.seed). Returns the
    trained model, the records (a mined one's errors replaced by its own error) and the mining summary.
    start(trainer) is what main gives every pass's trainer before it trains."""
    from datasets import Dataset
    from trl import SFTTrainer

    from llmhalluc.mining import choose, mine, near_misses
    from llmhalluc.trainers import fit

    clean = [replace(r, errors=[]) for r in records]
    examples, _ = encode_records(clean, tokenizer, backtrack_id, mask_errors=mask_errors, unit=unit)
    first = replace(config, max_steps=own.after_steps, output_dir=str(Path(config.output_dir) / CLEAN_DIR))
    trainer = SFTTrainer(model=model, args=first, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer)
    start(trainer)
    fit(trainer, first, params, {**identity, "pass": "clean"}, LIVE_DIR, "train_sft", last_step=own.after_steps,
        reload_finished=True)
    chosen = choose(records, own.rate, config.seed)
    if own.source == "synthetic":  # the control: the same two passes, prepare's kind of error
        mined, summary = near_misses([records[i] for i in chosen], config.seed)
    else:
        mined, summary = mine(trainer.model, tokenizer, [records[i] for i in chosen], samples=own.samples,
                              temperature=own.temperature, max_new_tokens=own.max_new_tokens,
                              batch_size=own.batch_size, seed=config.seed, backtrack_id=backtrack_id, unit=unit,
                              pattern=answer_pattern)
    records = list(records)
    for index, record in zip(chosen, mined, strict=True):
        records[index] = record
    print_once(f"train_sft: {own.source} errors: {summary['records_mined']} of {summary['records_tried']} chosen "
               f"records ({summary['samples_drawn']} samples) got one")
    return trainer.model, records, summary



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
