"""What the SFT and GRPO stages do the same way around their TRL trainer: fit it, then publish the model.

A Run is what both need of the stage (its name, TRL config, resolved params, the inputs that identify
it, where its curves go). fit resumes the same run's last complete checkpoint (a killed run continues;
a changed run starts over), logs to DVCLive and trains; publish writes the trained model, its tokenizer,
the resolved params and the lineage into the staged out, the curves into the folder dvc.yaml declares and
the run record beside the model, and clears the run's scratch once they are in place. SftTraining builds
each pass's SFT trainer.

The scratch is output_dir (checkpoints/<stage>): the checkpoints, the run's fingerprint, the curves as
they are written. It is no DVC out: `dvc repro` leaves it alone, so a killed run resumes with its curves,
and the stage's outs (model, curves, run record) are all cached and never persisted, so DVC keeps a
run-cache entry for the stage (persist: true would rule that out) and `dvc checkout` restores every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhalluc import checkpoints, lineage, tracking
from llmhalluc.backtrack.encoding import encode_records
from llmhalluc.backtrack.reach import scale_backtrack_update
from llmhalluc.checkpoints import SHARDS_DIR
from llmhalluc.launcher import is_main_process, print_once, rank, say, world_size
from llmhalluc.lora import save_adapter
from llmhalluc.outputs import staged_output, write_atomically
from llmhalluc.params import write_resolved
from llmhalluc.trl_compat import skip_checkpoint_card


@dataclass(frozen=True)
class Run:
    """One training stage's run as fit and publish see it: a pass of it (sft.own_errors) is a replace()d copy."""

    stage: str  # train_sft | train_grpo: the lineage's stage, the log's prefix
    config: Any  # the TRL config the trainer gets (output_dir: the checkpoints)
    params: dict  # the resolved params: recorded with the model, and (less NEUTRAL_KEYS) the run's identity
    identity: dict  # the inputs' hashes (data, base / start model, ...): with the params, what resumes
    live_dir: Path  # the DVCLive folder dvc.yaml declares: the curves appear there when the model is published
    work_dir: Path | None = None  # where DVCLive writes while training (default output_dir/dvclive): a pass of
                                  # the run keeps the run's, and a killed run's curves are there when it resumes

    def __post_init__(self) -> None:
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", Path(self.config.output_dir) / checkpoints.CURVES_DIR)


def fit(trainer: Any, run: Run, *, summary: dict | None = None, completions: bool = False,
        step_offset: int = 0, last_step: int | None = None, reload_finished: bool = False) -> tuple[Any, Any]:
    """Train, resuming the checkpoint of this run (params + identity: data, start model) if one is left.

    Returns TRL's TrainOutput and, under N processes, each rank's first batch (collect_shards).
    completions: GRPO's per-step completions tables too (rank 0). A run trained in passes logs
    a pass's steps after step_offset; last_step: where a pass that another follows ends (tracking.attach).
    reload_finished: if this run's last checkpoint is its last step, load its weights and train nothing
    (returns (None, None)): transformers, resumed at max_steps, would train one batch more.
    """
    config = run.config
    fingerprint = checkpoints.fingerprint(run.params, run.identity)
    with config.main_process_first(desc="pick the checkpoint to resume"):  # rank 0 clears, the others then agree
        last = checkpoints.resume_point(config.output_dir, fingerprint, log=print_once)
    resume_step = tracking.checkpoint_step(last)
    if reload_finished and resume_step is not None and resume_step >= config.max_steps > 0:
        print_once(f"resume: {last} is this run's last step: loading it, nothing left to train")
        trainer._load_from_checkpoint(last)  # transformers' own loader: full weights or the adapter
        return None, None
    tracking.attach(trainer, run.work_dir, resume_step=resume_step, summary=summary, step_offset=step_offset,
                    last_step=last_step)
    if completions and is_main_process():
        trainer.add_callback(tracking.CompletionsTable(trainer, run.work_dir / tracking.COMPLETIONS_DIR,
                                                       resume_step=resume_step))
    skip_checkpoint_card(trainer)  # TRL's placeholder model card, rewritten at every save, is no part of a run
    announce_shard(trainer, run.stage)
    result = trainer.train(resume_from_checkpoint=last)
    return result, collect_shards(trainer)


def publish(trainer: Any, tokenizer: Any, run: Run, out_dir: str, *, lora: bool, adapter_base: str, record: dict,
            shards: Any, built: dict[str, Path] | None = None, files: dict[str, str] | None = None) -> None:
    """The trained model into out_dir as one staged out, with the resolved params and its lineage record.

    A LoRA adapter names adapter_base as its base (as a user loads it from the repository root); a
    full model is saved by the trainer (it gathers ZeRO-3 / FSDP shards onto rank 0). record: what
    Lineage.root / child built. built: folders the run built for the out in its scratch (name inside
    the out -> source: the built-in base), copied in and then removed with the run's checkpoints;
    files: text files written in (name -> content). Then the curves (tracking.publish) and the run record
    beside the model (lineage.write_run).
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
        for name, source in (built or {}).items():
            shutil.copytree(source, staging / name)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        write_resolved(run.params, staging)
        lineage.write_lineage(staging, {
            "stage": run.stage, "kind": "lora" if lora else "full", **record, "params": run.params,
            **({"shards": shards} if shards else {}),
        })
    trainer.accelerator.wait_for_everyone()  # every rank has copied what it needed from the scratch
    if is_main_process():
        tracking.publish(run.work_dir, run.live_dir)
        lineage.write_run(out_dir, run.stage)
        for source in (built or {}).values():
            shutil.rmtree(source)
        checkpoints.clean(run.config.output_dir)


@dataclass
class SftTraining:
    """How train_sft builds the trainer of each pass (both of sft.own_errors): the records as ids, segment by
    segment (backtrack.encoding.encode_records), SFTTrainer on them, the backtrack rows' update scaled
    (sft.backtrack.lr_multiplier; 1 attaches nothing) and the token's reach measured before the first trains."""

    tokenizer: Any
    backtrack_id: int
    unit: str  # sft.backtrack.unit: how many backtracks follow an error
    mask_errors: bool
    lr_multiplier: float
    reach: Any  # diagnostics.Reachability (not imported: GRPO, which shares this module, needs no diagnostics)

    def encode(self, records: list[Any]) -> tuple[list[dict[str, list[int]]], list[int]]:
        """input_ids + labels per record, and each prompt's length (backtrack.encoding.encode_records)."""
        return encode_records(records, self.tokenizer, self.backtrack_id, mask_errors=self.mask_errors,
                              unit=self.unit)

    def trainer(self, model: Any, examples: list[dict[str, list[int]]], config: Any) -> Any:
        from datasets import Dataset
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(examples),
                             processing_class=self.tokenizer)
        scale_backtrack_update(trainer, self.backtrack_id, self.lr_multiplier)
        self.reach.before(trainer)
        return trainer


def announce_shard(trainer: Any, stage: str) -> None:
    """Under N processes, each rank records a fingerprint of the first batch it trains on.

    The record is a file per rank (output_dir/shards/rank-N.json), not only a log line:
    N processes share one stream, so a log line is evidence only when it arrives whole,
    and a file always does. Rank 0 gathers the files into the model's outs (see
    `collect_shards`), so "the data really was sharded" can be checked after the fact.
    The collator is wrapped rather than the data loader iterated ahead of time, so
    the sampler's random state (and with it resume and determinism) is untouched.
    """
    if world_size() == 1:
        return
    import hashlib
    import json

    collate = trainer.data_collator
    folder = Path(trainer.args.output_dir) / SHARDS_DIR
    announced = False

    def collate_and_announce(examples: list[Any]) -> Any:
        nonlocal announced
        if not announced:
            announced = True
            content = json.dumps(examples, sort_keys=True, default=str).encode()
            record = {"rank": rank(), "world_size": world_size(), "examples": len(examples),
                      "fingerprint": hashlib.sha256(content).hexdigest()[:12]}
            write_atomically(folder / f"rank-{rank()}.json", json.dumps(record))  # whole or absent, never half
            say(f"{stage}: rank {rank()} of {world_size()}: first batch of {len(examples)} examples, "
                f"fingerprint {record['fingerprint']}")
        return collate(examples)

    trainer.data_collator = collate_and_announce


def collect_shards(trainer: Any) -> dict[str, Any] | None:
    """Every rank's first-batch record of this run, by rank; None in a single process.

    Call after trainer.train() on every rank: the barrier makes sure each rank has
    written its record (each trains on a first batch before any step can finish, and
    the barrier is passed only when all have finished), then the shard files are removed
    with the rest of the run's scratch when the caller cleans output_dir.
    """
    if world_size() == 1:
        return None
    import json

    trainer.accelerator.wait_for_everyone()
    folder = Path(trainer.args.output_dir) / SHARDS_DIR
    records = {}
    for r in range(world_size()):
        path = folder / f"rank-{r}.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None or record.get("world_size") != world_size():
            raise RuntimeError(f"{path}: rank {r} recorded no first batch for this run of {world_size()} processes")
        records[str(r)] = record
    return records
