"""What every stage script shares: `--dry-run`, `--params`, its duration, and turning user errors and Ctrl-C
into one line and an exit code.

A stage reads its section first and exits 2 on a params problem before any
model or data is touched, so its earlier outputs on disk are left as they were.
What the params checks of every section may ask for is provided by the modules imported here
(llmhalluc.params.provided); a stage script imports the owners that only its own section needs.

Interrupted (Ctrl-C, SIGINT), it says in one line what the next `dvc repro` does
(a training stage: resumes from its last complete checkpoint) and exits 130, as a
shell reports a process ended by SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmhalluc import answers, hardware  # noqa: F401  (what they provide: prepare's answer checks, the Machine)
from llmhalluc.errors import OutputError, UserError
from llmhalluc.launcher import LAUNCHED_ENV, launch, needs_launch, print_once, rank, say, world_size
from llmhalluc.outputs import STORAGE_ERRNOS, os_reason
from llmhalluc.params import Section, load_section

#: The exit status of a process ended by SIGINT, as shells report it (128 + 2).
INTERRUPTED_EXIT_CODE = 130


def _print_resolved(config: dict) -> None:
    """The resolved section as JSON on stdout. A reader that stops early (`--dry-run | head`) closes the
    pipe: that is the reader's choice, not an error, so the rest goes nowhere and nothing is reported."""
    try:
        json.dump(config, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's own advice: point stdout at devnull, so the flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_stage(name: str, work: Callable[[Section], Any], resolve: Callable[[Section], dict], argv=None) -> None:
    """Parse the CLI, load params.yaml[name], then dry-run (print resolved JSON) or do the work."""
    stage = stage_name(name)
    parser = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=f"The {stage} stage of the pipeline.")
    parser.add_argument("--params", default="params.yaml", help="params file to read (default: params.yaml)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the section, print the fully resolved configuration as JSON, load nothing",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    section = None
    try:
        section = load_section(name, args.params, for_run=not args.dry_run)
        if args.dry_run:
            _print_resolved(resolve(section))
            return
        launcher = getattr(section.project, "launcher", None)
        if launcher is not None and needs_launch(launcher):
            # The ranks start as this process did: `python -m stages.<name>` (dvc.yaml) keeps a queued
            # experiment's copy first on their sys.path too.
            module = sys.modules["__main__"].__spec__
            code = launch(name, launcher, module.name if module else sys.argv[0], ["--params", args.params],
                          module=module is not None)
            if code == 0:
                say(f"{stage}: done in {duration(time.monotonic() - started)}")
            sys.exit(code)
        if world_size() > 1:
            say(f"{name}: rank {rank()} of world size {world_size()}")
        work(section)
        if os.environ.get(LAUNCHED_ENV) != "1":  # under accelerate, the launching process says it once
            print_once(f"{stage}: done in {duration(time.monotonic() - started)}")
    except KeyboardInterrupt:
        _close_progress_bars()
        if os.environ.get(LAUNCHED_ENV) != "1" and rank() == 0:  # the launching process says it once
            print(f"{stage}: interrupted; {what_resumes(stage, section)}", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk or a read-only folder outside the staged outs (a metrics file, a plot): the
        # user's to fix, so the path and the reason, not a traceback. Other OSErrors are bugs.
        if exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"error: {name}: {os_reason(exc)}", file=sys.stderr)
        sys.exit(OutputError.exit_code)


def _close_progress_bars() -> None:
    """Close the progress bars the interrupted work left open (the Trainer's tqdm bar): closed at exit
    instead, they would draw themselves again under the message."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()


def stage_name(section: str) -> str:
    """The DVC stage a script runs (train_sft for section sft): the script's own name, as dvc.yaml runs it."""
    script = Path(sys.argv[0])
    return script.stem if script.parent.name == "stages" and script.suffix == ".py" else section


def what_resumes(stage: str, section: Section | None) -> str:
    """What the next `dvc repro` does after an interrupt: a training stage resumes from the last complete
    checkpoint in its output_dir (llmhalluc.checkpoints); any other stage runs again, its earlier outs intact
    (they are swapped in whole, never written in place)."""
    from llmhalluc import checkpoints

    output_dir = _checkpoint_dir(section)
    if output_dir is None:
        return f"`dvc repro` runs {stage} again (its earlier outs are as they were)"
    complete = [c for c in checkpoints.checkpoints(output_dir) if checkpoints.is_complete(c)]
    if complete:
        return f"`dvc repro` resumes from {complete[-1]}"
    return f"no checkpoint in {output_dir} yet: `dvc repro` starts {stage} from the beginning"


def _checkpoint_dir(section: Section | None) -> str | None:
    """A training section's output_dir (TRL's key: the user's value, else TRL's default); None otherwise."""
    if section is None or "output_dir" not in (section.trl_fields or {}):
        return None
    return section.trl.get("output_dir") or section.trl_fields["output_dir"].default


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 8.2 s, 3 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
