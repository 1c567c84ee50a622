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

from pathlib import Path

from llmhalluc.datasets.records import read_answer_rules, read_jsonl, read_meta
from llmhalluc.launcher import print_once
from llmhalluc.params import Section, resolved, trl_config
from llmhalluc.stage import run_stage

LIVE_DIR = Path("dvclive/train_sft")  # declared in dvc.yaml (metrics + plots)


def main(section: Section) -> None:
    from llmhalluc import diagnostics, lineage, mining, models, tracking
    from llmhalluc.lora import lora_config, with_adapter
    from llmhalluc.rng import seed_everything
    from llmhalluc.training_run import Run, SftTraining, fit, publish

    p = section.project
    config = trl_config(section)
    seed_everything(config.seed)
    data_file = Path(p.data_dir) / "sft.jsonl"
    records = read_jsonl(data_file)

    # The model: its base (the built-in one built from the seed and the clean text only: a tokenizer trained on
    # the injected errors too would change with prepare.backtrack.*), the backtrack token, LoRA if asked.
    start = models.sft_start(p, config, [r.question for r in records] + [r.solution() for r in records])
    model = start.model
    if p.lora.enabled:
        model = with_adapter(model, lora_config(p.lora, start.backtrack_id, model))
    data = lineage.data_record(data_file)
    run = Run("train_sft", config, resolved(section, config), {"data": data["sha256"], "base": start.base}, LIVE_DIR)
    # How reachable the token is (P(backtrack) after a wrong vs a right step) as initialised and after training.
    reach = diagnostics.Reachability(start.tokenizer, records[:p.backtrack.report_problems], seed=config.seed,
                                     backtrack_id=start.backtrack_id, unit=p.backtrack.unit,
                                     batch_size=config.per_device_eval_batch_size)
    sft = SftTraining(start.tokenizer, start.backtrack_id, p.backtrack.unit, p.mask_errors,
                      p.backtrack.lr_multiplier, reach)

    # sft.own_errors: a first pass on the records without errors, then a share of them gets the model's own error.
    own = (mining.own_errors_pass(sft, run, model, records, p.own_errors, read_answer_rules(p.data_dir).pattern)
           if p.own_errors.rate > 0 else mining.OwnErrors.off(model, records))
    model, records, run = own.model, own.records, own.second(run)

    # Data to ids: N error tokens are followed by exactly N backtracks. The lengths are what GRPO and eval check
    # their limits against, and what grpo.rewards.backtrack.max_backtracks: auto sizes from.
    examples, prompt_lengths = sft.encode(records)
    lengths = lineage.length_record(examples, prompt_lengths, config.max_length, backtrack_id=start.backtrack_id)
    lineage.warn_if_truncated(lengths, config.max_length, len(examples), log=print_once)

    # Train, resuming the same run's last complete checkpoint if a killed run left one.
    trainer = sft.trainer(model, examples, run.config)
    summary = {"data": {**lengths, "examples": len(examples)}, **reach.record(), **own.metrics()}  # metrics show
    result, shards = fit(trainer, run, summary=summary, step_offset=own.after_steps)
    if reach:
        tracking.add_to_summary(run.work_dir, {"backtrack_reachability": {"after": reach.after(trainer.model)}})

    publish(trainer, start.tokenizer, run, p.model_dir, lora=p.lora.enabled, shards=shards, files=own.files(),
            adapter_base=start.adapter_base(p.model_dir), built={"base": start.built} if start.built else None,
            record=lineage.Lineage.root(
                start.base, data=data, token=p.backtrack.token, token_id=start.backtrack_id, unit=p.backtrack.unit,
                vocab_rows=start.vocab_rows, lengths=lengths, end_of_turn=start.end_of_turn,
                mistakes=read_meta(p.data_dir).get("mistakes"),  # what the data taught: eval's probe reads the kind
                **reach.record(), **own.record()))
    print(f"train_sft: {result.global_step + own.after_steps} steps, loss {result.training_loss:.4f} -> "
          f"{p.model_dir}")


if __name__ == "__main__":
    run_stage("sft", main, resolved)
