"""Training curves for `dvc plots` and `dvc metrics`: DVCLive through the HF Trainer integration.

One logger, one row per logged optimiser step:

- the Trainer's own `DVCLiveCallback` (what `report_to: dvclive` adds) is replaced by
  `TrainerLive`, which pins DVCLive's step to the Trainer's `global_step` (DVCLive's own
  counter advances on every `on_log`, so the end-of-training summary would become an extra
  step), never writes dvc.yaml (`dvcyaml=None`: the pipeline declares the folder) and never
  saves an experiment itself (`save_dvc_exp=False`: `dvc exp run` does);
- on resume it continues the same files and drops rows logged after the checkpoint it
  resumes from, so a killed-and-resumed run has each step exactly once;
- wall-clock values (runtime, throughput) stay out: same params and seed -> same files.

Layout (declared in dvc.yaml): `<dir>/metrics.json` (summary: last value of each curve,
`train_loss`, `step`), `<dir>/plots/metrics/train/<name>.tsv` (one curve per file), and GRPO's
`<dir>/completions/step_<N>.json`.

While training, DVCLive writes into the run's scratch (training_run.Run.work_dir, beside the
checkpoints, where a killed run's curves wait for its resume: DVC deletes a stage's outs before it
runs); `publish` puts them into the declared folder when the model is published.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import DVCLiveCallback

from llmhalluc.trl_compat import completions_log, skip_dvclive_setup

#: Log keys that measure the machine, not the run: they would make two identical runs differ.
_WALL_CLOCK = re.compile(r"(runtime|per_second|step_time|_flos$|^total_flos$|^time/)")
#: Kept in the summary only: the mean loss of the run is not a point of the curve. The rest of the
#: Trainer's end-of-training log repeats the last step (epoch) or is wall-clock time.
_SUMMARY_ONLY = {"train_loss"}


def metric_name(key: str) -> str:
    """`loss` -> `train/loss`, `eval_loss` -> `eval/loss`: DVCLive's train/eval split layout."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return "train/" + key


class TrainerLive(DVCLiveCallback):
    """The HF Trainer's DVCLive callback with the pipeline's settings (see module docstring)."""

    def __init__(self, directory: str | Path, *, resume_step: int | None = None,
                 summary: dict[str, Any] | None = None, step_offset: int = 0, last_step: int | None = None) -> None:
        from dvclive import Live

        self.step_offset = step_offset  # a later pass of one run (train_sft's own errors) continues the curves
        if resume_step is not None or step_offset:
            truncate_after(directory, step_offset + (resume_step or 0), until=last_step)
        live = Live(dir=str(directory), resume=resume_step is not None or step_offset > 0, report=None,
                    save_dvc_exp=False, dvcyaml=None)
        live.summary.update(summary or {})  # facts of the run beside the curves' last values (dvc metrics show)
        atexit.register(close_dvc_repo, live)
        super().__init__(live=live, log_model=False)

    def setup(self, args, state, model) -> None:
        skip_dvclive_setup(self)  # no second copy of the params beside the curves

    def on_log(self, args, state, control, model=None, logs=None, **kwargs) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self.live.step = self.step_offset + state.global_step
        summary_log = "train_runtime" in logs  # the Trainer's one end-of-training log
        for key, value in logs.items():
            if _WALL_CLOCK.search(key) or not _is_scalar(value):
                continue
            if key in _SUMMARY_ONLY:
                self.live.summary[key] = value
            elif not summary_log:
                self.live.log_metric(metric_name(key), value)
        self.live.make_summary()
        if not summary_log:
            self.live.next_step()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            self.live.step = self.step_offset + state.global_step
            self.live.end()


def close_dvc_repo(live: Any) -> None:
    """Close the DVC repo (and the git object store under it) that DVCLive opened to read the git state.

    DVCLive never closes it, and its Studio thread (a daemon, never stopped) keeps the Live alive until
    the interpreter shuts down, so dulwich's open pack files were finalised during shutdown; after a
    Ctrl-C that printed "Exception ignored ... dulwich" blocks. Registered with atexit: it runs on a
    finished run and an interrupted one alike, while the interpreter is whole."""
    repo = getattr(live, "_dvc_repo", None)
    if repo is not None:
        with contextlib.suppress(Exception):  # cleanup at exit: a repo that will not close is no news to the user
            repo.close()


def _is_scalar(value: Any) -> bool:
    from dvclive.plots import Metric

    return Metric.could_log(value) and not isinstance(value, str)


def truncate_after(directory: str | Path, step: int, until: int | None = None) -> None:
    """Drop rows with step > `step` (and <= `until`, if given) from every curve: they were logged after the
    checkpoint we resume from (rows past `until` belong to a later pass of the same run and stay)."""
    for path in (Path(directory) / "plots" / "metrics").rglob("*.tsv"):
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
        if not rows:
            continue
        kept = [r for r in rows if int(r["step"]) <= step or (until is not None and int(r["step"]) > until)]
        out = io.StringIO()
        writer = csv.DictWriter(out, rows[0].keys(), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        path.write_text(out.getvalue())


def attach(trainer: Any, directory: str | Path, *, resume_step: int | None = None,
           summary: dict[str, Any] | None = None, step_offset: int = 0,
           last_step: int | None = None) -> TrainerLive | None:
    """Give the trainer exactly one DVCLive logger (ours), whatever `report_to` says; on rank 0 only.

    Other ranks get none: a second Live on the same folder would truncate rank 0's files.
    ``summary`` adds fixed values to the summary metrics, e.g. how many SFT examples
    max_length cut, so `dvc metrics show` puts them beside the loss. A run trained in passes (train_sft
    with sft.own_errors) logs each pass at `step_offset` + its own step; `last_step` is where this
    pass ends, so resuming it keeps a later pass's rows (those are that pass's to drop).
    """
    from llmhalluc.launcher import is_main_process

    trainer.remove_callback(DVCLiveCallback)
    if not is_main_process():
        return None
    callback = TrainerLive(directory, resume_step=resume_step, summary=summary, step_offset=step_offset,
                           last_step=last_step)
    trainer.add_callback(callback)
    return callback


def add_to_summary(directory: str | Path, values: dict[str, Any]) -> None:
    """Merge values known only after training into the summary `attach` wrote (rank 0; others do nothing).

    DVCLive has ended with the Trainer's on_train_end; the summary is its metrics.json, written
    back the way DVCLive writes it, so `dvc metrics show` lists these beside the loss.
    """
    from dvclive.serialize import dump_json

    from llmhalluc.launcher import is_main_process

    if not is_main_process():
        return
    path = Path(directory) / "metrics.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in values.items():
        summary[key] = {**summary[key], **value} if isinstance(value, dict) and isinstance(summary.get(key), dict) \
            else value
    dump_json(summary, str(path))


def publish(work_dir: str | Path, live_dir: str | Path) -> None:
    """The curves as written in work_dir into live_dir (rank 0), each entry whole: a folder staged and swapped in
    (plots/, completions/), a file written beside and renamed (metrics.json). What else live_dir holds (the
    .gitignore DVC writes for its outs) stays."""
    import shutil

    from llmhalluc.launcher import is_main_process
    from llmhalluc.outputs import staged_output, write_atomically

    work, live = Path(work_dir), Path(live_dir)
    if not is_main_process() or not work.is_dir():
        return
    for entry in sorted(work.iterdir()):
        if entry.is_dir():
            with staged_output(live / entry.name) as staging:
                shutil.copytree(entry, staging, dirs_exist_ok=True)
        else:
            write_atomically(live / entry.name, entry.read_text(encoding="utf-8"))


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The global step of a checkpoint-N folder (None for a fresh start)."""
    return None if checkpoint is None else int(Path(checkpoint).name.rsplit("-", 1)[1])


# --------------------------------------------------------------------------- GRPO completions

#: Under a run's curves: one JSON table per logging step (CompletionsTable).
COMPLETIONS_DIR = "completions"
#: The columns `observe_completions` adds to TRL's completions log (and to our table).
RAW, RESOLVED, BACKTRACKS = "raw", "resolved", "backtracks"


def observe_completions(reward_fn: Any, tokenizer: Any, backtrack_id: int, unit: str = "token",
                        judge: Any = None) -> Any:
    """Wrap one reward function so each generation batch also logs what rewards cannot show.

    TRL hands reward functions `log_metric` (a scalar averaged per logging interval) and
    `log_extra` (a column of the completions log). Through them: backtracks per completion
    (mean, and the share of completions with at least one), and per completion the raw text
    with its backtracks visible (TRL's own text is decoded with skip_special_tokens) and the
    backtrack-resolved text (by the model's retraction unit, as the rewards resolve). The reward
    itself is returned unchanged, under the same name.

    With `judge` (the accuracy reward's rewards.AnswerJudge) and the dataset's `answer` column, also
    what the backtracks did to the answer, as shares of the batch's completions (`backtrack_effects`):
    `backtracks/corrected` (wrong with the backtrack tokens merely stripped, every retracted token
    kept; right once resolved) and `backtracks/broken` (right stripped, wrong resolved).
    """
    from llmhalluc.backtrack.retraction import count_backtracks, retraction_for

    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)

    def observed(prompts, completions, completion_ids, log_extra=None, log_metric=None, **columns):
        counts = [count_backtracks(ids, backtrack_id) for ids in completion_ids]
        if log_metric is not None and counts:
            log_metric("backtracks/mean_per_completion", sum(counts) / len(counts))
            log_metric("backtracks/share_with_any", sum(c > 0 for c in counts) / len(counts))
            if judge is not None and "answer" in columns:
                corrected, broken = backtrack_effects(tokenizer, retraction, judge, completion_ids, columns)
                log_metric("backtracks/corrected", corrected)
                log_metric("backtracks/broken", broken)
        if log_extra is not None:
            log_extra(RAW, [tokenizer.decode(ids, skip_special_tokens=False) for ids in completion_ids])
            log_extra(RESOLVED, [tokenizer.decode(retraction.resolve(ids), skip_special_tokens=True)
                                 for ids in completion_ids])
            log_extra(BACKTRACKS, counts)
        return reward_fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
                         log_extra=log_extra, log_metric=log_metric, **columns)

    observed.__name__ = reward_fn.__name__
    return observed


def backtrack_effects(tokenizer: Any, retraction: Any, judge: Any, completion_ids: list[list[int]],
                      columns: dict[str, Any]) -> tuple[float, float]:
    """(corrected, broken): shares of the completions whose backtracks turned a wrong answer right, or a right
    one wrong. "Stripped" is the completion with its backtrack tokens removed and nothing retracted (the text
    a reader who ignores the token sees); "resolved" applies them by the unit. A completion without
    backtracks is neither. Judged as the accuracy reward judges (rewards.AnswerJudge, rewards.gold_answers)."""
    from llmhalluc.rewards import gold_answers

    if not completion_ids:
        return 0.0, 0.0
    golds = gold_answers(judge, "accuracy", len(completion_ids), columns)
    corrected = broken = 0
    for ids, gold in zip(completion_ids, golds, strict=True):
        if retraction.backtrack_id not in ids:
            continue
        stripped = tokenizer.decode([i for i in ids if i != retraction.backtrack_id], skip_special_tokens=True)
        resolved = tokenizer.decode(retraction.resolve(ids), skip_special_tokens=True)
        right_stripped = gold is not None and judge.final(stripped, gold) == gold
        right_resolved = gold is not None and judge.final(resolved, gold) == gold
        corrected += right_resolved and not right_stripped
        broken += right_stripped and not right_resolved
    return corrected / len(completion_ids), broken / len(completion_ids)


class CompletionsTable(TrainerCallback):
    """At each logging step, the last generation batch as a table: `<dir>/step_<N>.json`.

    Rows: prompt (last user turn), raw and resolved completion, backtracks, one column per
    reward, advantage. Read from the trainer's completions log (trl_compat.completions_log, what
    TRL's own `log_completions` prints), which `observe_completions` extends.
    """

    def __init__(self, trainer: Any, directory: str | Path, *, resume_step: int | None = None) -> None:
        self.trainer = trainer
        self.directory = Path(directory)
        for old in self.directory.glob("step_*.json"):  # a fresh run, or steps after the resumed checkpoint
            if resume_step is None or int(old.stem.split("_")[1]) > resume_step:
                old.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        logs_of = completions_log(self.trainer)
        if not state.is_world_process_zero or not logs_of or not logs_of["prompt"]:
            return
        extra, rewards = logs_of["extra"], logs_of["rewards"]
        rows = []
        for i, prompt in enumerate(logs_of["prompt"]):
            text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            row = {"step": state.global_step, "prompt": text}
            row.update({key: extra[key][i] for key in (RAW, RESOLVED, BACKTRACKS) if len(extra[key]) > i})
            row.update({f"reward/{name}": values[i] for name, values in rewards.items()})
            row["advantage"] = logs_of["advantages"][i]
            rows.append(row)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{state.global_step:05d}.json"
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
