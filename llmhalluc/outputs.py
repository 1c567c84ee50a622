"""Writing a stage's outs safely: one file atomically, or a whole out folder staged and swapped in.

A leaf of the library (it imports only errors and launcher), so params, datasets and
stage scripts can all use it without an import circle.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llmhalluc.errors import OutputError
from llmhalluc.launcher import is_main_process

#: errno values that mean "this machine cannot store it here", as opposed to a bug in a stage.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(exc: BaseException) -> str | None:
    """The operating system's reason if exc says the machine could not store a file, else None.

    safetensors (Rust) reports a failed write as SafetensorError with the OS
    error in its text rather than as an OSError, so it is recognised by that text.
    """
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return os_reason(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc):
        return str(exc).split("I/O error: ", 1)[1]
    return None


def os_reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def write_atomically(path: str | Path, text: str) -> None:
    """One file, written beside and renamed into place: a crash (or a parallel experiment writing the same
    cache) never leaves half a file for DVC or the next run to read. staged_output does the same for folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside out_dir; on success it replaces out_dir, on failure it is removed.

    A crash, a full disk or a bad input mid-stage therefore leaves the previous
    outs whole, and the new outs appear complete or not at all. A write that
    fails (disk full, no permission) becomes an OutputError naming the out and
    the reason, raised after the cleanup, so the user reads one line, not a traceback.
    """
    out = Path(out_dir)
    old = out.with_name(f".{out.name}.old")
    _recover_interrupted_swap(out, old)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise OutputError(_cannot_write(out, os_reason(exc))) from exc
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would make the published outs private
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = write_failure(exc)
        if reason is not None:
            raise OutputError(_cannot_write(out, reason)) from exc
        raise
    if not is_main_process():
        # Other ranks take part in collective saves (ZeRO-3 gathers weights) but publish nothing.
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        staging.rename(out)
    except OSError as exc:
        if old.exists() and not out.exists():
            old.rename(out)
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(_cannot_write(out, os_reason(exc))) from exc
    shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_swap(out: Path, old: Path) -> None:
    """A run killed between the swap's two renames left the previous outs at .name.old: put them back."""
    if is_main_process() and old.is_dir() and not out.exists():
        old.rename(out)


def _cannot_write(out: Path, reason: str) -> str:
    return (f"{out}: could not write the stage's outs ({reason}); the previous {out} is left as it was. "
            "Free disk space or fix the folder's permissions, then run the stage again.")
