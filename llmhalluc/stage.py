"""What every stage script shares: `--dry-run`, `--params`, and turning user errors into exit codes.

A stage reads its section first and exits 2 on a params problem before any
model or data is touched, so its earlier outputs on disk are left as they were.
What the params checks of every section may ask for is provided by the modules imported here
(llmhalluc.params.provided); a stage script imports the owners that only its own section needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from llmhalluc import answers, hardware  # noqa: F401  (what they provide: prepare's answer checks, the Machine)
from llmhalluc.errors import OutputError, UserError
from llmhalluc.launcher import launch, needs_launch, rank, say, world_size
from llmhalluc.outputs import STORAGE_ERRNOS, os_reason
from llmhalluc.params import Section, load_section


def run_stage(name: str, work: Callable[[Section], Any], resolve: Callable[[Section], dict], argv=None) -> None:
    """Parse the CLI, load params.yaml[name], then dry-run (print resolved JSON) or do the work."""
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"The {name} stage of the pipeline.")
    parser.add_argument("--params", default="params.yaml", help="params file to read (default: params.yaml)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the section, print the fully resolved configuration as JSON, load nothing",
    )
    args = parser.parse_args(argv)
    try:
        section = load_section(name, args.params, for_run=not args.dry_run)
        if args.dry_run:
            json.dump(resolve(section), sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
            return
        launcher = getattr(section.project, "launcher", None)
        if launcher is not None and needs_launch(launcher):
            # The ranks start as this process did: `python -m stages.<name>` (dvc.yaml) keeps a queued
            # experiment's copy first on their sys.path too.
            started = sys.modules["__main__"].__spec__
            sys.exit(launch(name, launcher, started.name if started else sys.argv[0], ["--params", args.params],
                            module=started is not None))
        if world_size() > 1:
            say(f"{name}: rank {rank()} of world size {world_size()}")
        work(section)
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
