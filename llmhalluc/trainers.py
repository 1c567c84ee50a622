"""What the SFT and GRPO stages do the same way around their TRL trainer: fit it, then publish the model.

fit resumes the same run's last complete checkpoint (a killed run continues; a changed run starts
over), logs to DVCLive and trains; publish writes the trained model, its tokenizer, the resolved
params and the lineage into the staged out, and clears the checkpoints once the out is in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmhalluc import checkpoints, lineage, tracking
from llmhalluc.launcher import announce_shard, collect_shards, is_main_process, print_once
from llmhalluc.outputs import staged_output
from llmhalluc.params import write_resolved
from llmhalluc.training import save_adapter


def fit(trainer: Any, config: Any, params: dict, identity: dict, live_dir: Path, stage: str, *,
        summary: dict | None = None, completions: Path | None = None) -> tuple[Any, Any]:
    """Train, resuming the checkpoint of this run (params + identity: data, start model) if one is left.

    Returns TRL's TrainOutput and, under N processes, each rank's first batch (launcher.collect_shards).
    completions: where GRPO's per-step completions tables go (rank 0).
    """
    run = checkpoints.fingerprint(params, identity)
    with config.main_process_first(desc="pick the checkpoint to resume"):  # rank 0 clears, the others then agree
        last = checkpoints.resume_point(config.output_dir, run, log=print_once)
    resume_step = tracking.checkpoint_step(last)
    tracking.attach(trainer, live_dir, resume_step=resume_step, summary=summary)
    if completions is not None and is_main_process():
        trainer.add_callback(tracking.CompletionsTable(trainer, completions, resume_step=resume_step))
    announce_shard(trainer, stage)
    result = trainer.train(resume_from_checkpoint=last)
    return result, collect_shards(trainer)


def publish(trainer: Any, tokenizer: Any, config: Any, params: dict, out_dir: str, stage: str, *, lora: bool,
            adapter_base: str, record: dict, shards: Any, extra: dict[str, Path] | None = None) -> None:
    """The trained model into out_dir as one staged out, with the resolved params and its lineage record.

    A LoRA adapter names adapter_base as its base (as a user loads it from the repository root); a
    full model is saved by the trainer (it gathers ZeRO-3 / FSDP shards onto rank 0). extra: folders
    copied in (name inside the out -> source). The checkpoints go once the out is in place.
    """
    import shutil

    with staged_output(out_dir) as staging:
        if lora:
            trainer.model.peft_config["default"].base_model_name_or_path = adapter_base
            save_adapter(trainer.model, staging)
        else:
            trainer.save_model(str(staging))
            (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the resolved params say it all
        tokenizer.save_pretrained(staging)
        for name, source in (extra or {}).items():
            shutil.copytree(source, staging / name)
        write_resolved(params, staging)
        lineage.write_lineage(staging, {
            "stage": stage, "kind": "lora" if lora else "full", **record, **lineage.git_state(), "params": params,
            **({"shards": shards} if shards else {}),
        })
    if is_main_process():
        checkpoints.clean(config.output_dir)
