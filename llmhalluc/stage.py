"""What every stage script shares: `--dry-run`, `--params`, and turning user errors into exit codes.

A stage reads its section first and exits 2 on a params problem before any
model or data is touched, so its earlier outputs on disk are left as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmhalluc.errors import UserError
from llmhalluc.launcher import is_main_process, launch, needs_launch, rank, world_size
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
            sys.exit(launch(name, launcher, sys.argv[0], ["--params", args.params]))
        if world_size() > 1:
            print(f"{name}: rank {rank()} of world size {world_size()}", flush=True)
        work(section)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside out_dir; on success it replaces out_dir, on failure it is removed.

    A crash, a full disk or a bad input mid-stage therefore leaves the previous
    outs whole, and the new outs appear complete or not at all.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the published outs private
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not is_main_process():
        # Other ranks take part in collective saves (ZeRO-3 gathers weights) but publish nothing.
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
