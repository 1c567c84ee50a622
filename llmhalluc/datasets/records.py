"""The one record shape every converter produces and every later stage reads.

A record keeps the solution as *steps* and any augmentation error as (step
index, error text), never as pre-rendered text with backtracks in it: the number
of backtracks depends on the tokenizer, which only the training stage knows.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmhalluc.answers import DEFAULT_ABSTAIN, DEFAULT_PATTERN, AnswerRules, answer_sentence, pattern_problem
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


def chat_prompt(question: str, system_prompt: str) -> list[dict[str, str]]:
    """The one prompt format of the project: a system line, then the question as the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": question}]


def jsonl_text(records: list[Record]) -> str:
    """Records as the lines read_jsonl reads back: one sorted-key JSON object each (what prepare writes)."""
    return "".join(json.dumps(asdict(record), sort_keys=True) + "\n" for record in records)


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Build and write many records without Python's cycle collector. Records are trees of strings, lists
    and dicts, freed by reference counting alone, and the collector's passes over an ever larger heap made
    prepare's time per row grow with the row count (100k rows took 1.7x the time per row of 10k)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def write_jsonl(records: list[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_text(records), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[Record]:
    """Read prepared records; a malformed line is a DataError naming file and line.

    Field types are checked too: a hand-edited or half-written file must stop the
    stage here, not train on a string iterated as a list of steps.
    """
    path = Path(path)
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text: {exc.reason}"
        raise DataError(f"{path}: cannot read prepared data ({reason}); run `dvc repro prepare`") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
            raw["errors"] = [Error(**e) for e in raw.get("errors", [])]
            record = Record(**raw)
            _check_types(record)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}:{number}: not a prepared record ({exc}); run `dvc repro prepare`") from exc
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records (prepare never writes an empty set); run `dvc repro prepare`")
    return records


def _check_types(record: Record) -> None:
    for name in ("id", "question", "answer", "source"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"{name} must be a string, got {getattr(record, name)!r}")
    if not isinstance(record.answerable, bool):
        raise TypeError(f"answerable must be true or false, got {record.answerable!r}")
    if not isinstance(record.steps, list) or not all(isinstance(s, str) for s in record.steps):
        raise TypeError(f"steps must be a list of strings, got {record.steps!r}")
    prompt = record.prompt
    if not isinstance(prompt, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        raise TypeError(f"prompt must be a list of {{role, content}} messages, got {record.prompt!r}")
    for error in record.errors:
        if not isinstance(error.step, int) or not isinstance(error.text, str):
            raise TypeError(f"errors entries need an integer step and a text, got {error!r}")


#: Facts about the prepared sets as a whole (the answer rules, the sources), beside the three .jsonl files.
META_FILE = "meta.json"


def write_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared folder ({} where the folder predates it)."""
    meta_file = Path(data_dir) / META_FILE
    if not meta_file.is_file():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{meta_file}: not valid JSON ({exc}); re-run `dvc repro prepare`") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{meta_file}: expected a JSON object; re-run `dvc repro prepare`")
    return meta


def read_answer_rules(data_dir: str | Path) -> AnswerRules:
    """The answer pattern and abstain phrase prepare recorded (the defaults where the file predates them)."""
    meta_file = Path(data_dir) / META_FILE
    meta = read_meta(data_dir)
    rules = AnswerRules(pattern=meta.get("answer_pattern", DEFAULT_PATTERN),
                        abstain=meta.get("abstain_answer", DEFAULT_ABSTAIN))
    if not isinstance(rules.abstain, str) or not rules.abstain.strip():
        raise DataError(f"{meta_file}: abstain_answer must be a non-empty string, got {rules.abstain!r}")
    problem = pattern_problem(rules.pattern) if isinstance(rules.pattern, str) else "not a string"
    if problem:
        raise DataError(f"{meta_file}: answer_pattern: {problem}")
    return rules
