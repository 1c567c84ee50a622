"""The errors a user can fix, one type per kind.

A stage catches these at its top level, prints the message alone (no traceback:
the message already names the key, file and line) and exits with the kind's code:

    2  ParamsError   params.yaml (or the dataset registry) is wrong; nothing ran
    3  DataError     an input file or record is wrong (file:line or record id)
    4  OutputError   the outs could not be written (disk full, permissions); the previous outs are intact

Anything else is a bug in this project and keeps its traceback (exit 1). UserError and ParamsError are
defined in llmhalluc.params.errors (the params layer imports nothing above it) and re-exported here.
"""

from __future__ import annotations

from llmhalluc.params.errors import ParamsError, UserError

__all__ = ["DataError", "OutputError", "ParamsError", "UserError"]


class DataError(UserError):
    """An input file or record is wrong; the message names the file and line or record id."""

    exit_code = 3


class OutputError(UserError):
    """The outs could not be written: disk full, file too large, no permission, read-only filesystem.

    Exit code 4. Raised by llmhalluc.outputs.staged_output after it removed its
    staging folder, so the previous outs are still in place and whole; the
    message names the out, the file and the operating system's reason.
    """

    exit_code = 4
