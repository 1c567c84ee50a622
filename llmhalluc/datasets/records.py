"""The one record shape every converter produces and every later stage reads.

A record keeps the solution as *steps* and any augmentation error as (step
index, error text), never as pre-rendered text with backtracks in it: the number
of backtracks depends on the tokenizer, which only the training stage knows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmhalluc.errors import DataError


@dataclass
class Error:
    """A wrong continuation inserted before steps[step], to be retracted by backtracks."""

    step: int
    text: str


@dataclass
class Record:
    id: str
    question: str
    steps: list[str]
    answer: str
    answerable: bool = True
    errors: list[Error] = field(default_factory=list)
    #: Chat messages before the answer, rendered once by prepare so SFT, GRPO and eval share them.
    prompt: list[dict[str, str]] = field(default_factory=list)
    #: The registry entry the record came from.
    source: str = ""

    def answer_sentence(self) -> str:
        """The closing sentence every solution ends with, and the one rewards and eval extract from."""
        return answer_sentence(self.answer)

    def segments(self) -> list[str]:
        """The solution as the units errors are inserted between: the steps, then the answer sentence."""
        return [*self.steps, self.answer_sentence()]

    def solution(self) -> str:
        """The clean target text: the steps, then the answer sentence the rewards look for."""
        return " ".join(self.segments())


def answer_sentence(answer: str) -> str:
    return f"The answer is {answer}."


def chat_prompt(question: str, system_prompt: str) -> list[dict[str, str]]:
    """The one prompt format of the project: a system line, then the question as the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": question}]


def write_jsonl(records: list[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record), sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[Record]:
    """Read prepared records; a malformed line is a DataError naming file and line."""
    path = Path(path)
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read prepared data ({exc.strerror}); run `dvc repro prepare`") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            raw["errors"] = [Error(**e) for e in raw.get("errors", [])]
            records.append(Record(**raw))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}:{number}: not a prepared record ({exc})") from exc
    return records
