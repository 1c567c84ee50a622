"""The params error, and the base of every error a user can fix: llmhalluc.errors re-exports both beside
the other kinds (DataError, OutputError), so `from llmhalluc.errors import ParamsError` is the one spelling
the library uses. They are defined here because the params layer imports no llmhalluc module above it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave us, not in the code."""

    exit_code = 1


class ParamsError(UserError):
    """params.yaml is wrong: unknown key, bad type, bad choice, inconsistent values.

    Exit code 2, like argparse's usage errors: the run never started.
    """

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
