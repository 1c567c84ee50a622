"""From registry entries to the three prepared sets, with no question in both train and eval.

Each entry is read and converted on its own random stream (seeded by
`prepare.seed` and the entry's name), so adding an eval source does not
reshuffle the training data. Eval is drawn first; an entry named for both
train and eval gives eval a held-out slice and train the rest. Then a check
on normalised questions catches leakage between *different* sources (the
same GSM8K problem in two files), which no split can fix: that is an error.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from llmhalluc.datasets.converters import CONVERTERS, BadRow, Context
from llmhalluc.datasets.records import Record
from llmhalluc.datasets.registry import DatasetEntry
from llmhalluc.datasets.sources import RawRow, read_rows
from llmhalluc.errors import DataError, ParamsError
from llmhalluc.params.sections import PrepareParams
from llmhalluc.params.yaml12 import ParamsFile


@dataclass
class Drops:
    """Rows left out and why, for the stats: `prepare.on_bad_row: skip` must never lose rows silently."""

    counts: Counter = field(default_factory=Counter)

    def add(self, entry: str, kind: str) -> None:
        self.counts[f"{entry}/{kind}"] += 1

    def as_dict(self) -> dict[str, int]:
        return {"total": sum(self.counts.values()), **dict(sorted(self.counts.items()))}


def normalize_question(text: str) -> str:
    """Case, spacing and punctuation folded, so `What is 2+2?` and `what is 2 + 2` count as one question."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def entry_rng(seed: int, name: str, purpose: str) -> random.Random:
    """A stream of its own per entry and purpose (a str seed is hashed with SHA-512: stable across runs)."""
    return random.Random(f"{seed}/{name}/{purpose}")


def load_entry(name: str, entry: DatasetEntry, p: PrepareParams, wanted: int, registry: ParamsFile,
               drops: Drops) -> list[Record]:
    """Read and convert one entry's rows, deduplicated by question and shuffled on the entry's own stream."""
    rows = read_rows(entry.source, arithmetic=p.arithmetic, rng=entry_rng(p.seed, name, "generate"), wanted=wanted,
                     declared=f"registry entry {name}, {registry.where((name, 'source', 'path'))}: {name}.source.path")
    convert = CONVERTERS[entry.converter]
    if not rows:
        raise DataError(f"{entry.source.describe()}: empty source (registry entry {name}, converter "
                        f"{entry.converter}); nothing to prepare")
    _check_columns(name, entry, rows, registry)
    ctx = Context(entry=name, columns=entry.columns, prompt=entry.prompt, abstain_answer=p.abstain_answer)
    records, seen = [], set()
    for row in rows:
        try:
            if row.data is None:
                raise BadRow("malformed_row", row.problem or "unreadable row")
            record = convert(row.data, row.index, ctx)
        except BadRow as exc:
            if p.on_bad_row == "error":
                raise DataError(f"{row.location}: {exc} (converter {entry.converter}, registry entry {name}"
                                f"{_record_id(row)}); fix the row or set prepare.on_bad_row: skip") from None
            drops.add(name, exc.kind)
            continue
        question = normalize_question(record.question)
        if question in seen:
            drops.add(name, "duplicate_question")
            continue
        seen.add(question)
        record.source = name
        records.append(record)
    if not records:
        raise DataError(f"{entry.source.describe()}: every row was dropped (registry entry {name}); see the "
                        f"reasons with prepare.on_bad_row: error")
    entry_rng(p.seed, name, "shuffle").shuffle(records)
    return records


def _record_id(row: RawRow) -> str:
    if row.data and row.data.get("id") not in (None, ""):
        return f", record {row.data['id']}"
    return ""


def _check_columns(name: str, entry: DatasetEntry, rows: list[RawRow], registry: ParamsFile) -> None:
    """A column the converter needs that no row has: the registry's mapping is wrong (or missing), not a row."""
    present = set().union(*(row.data.keys() for row in rows if row.data))
    if not present:
        return
    for field_name in CONVERTERS[entry.converter].required:
        column = entry.columns.get(field_name, field_name)
        if column in present:
            continue
        columns = ", ".join(sorted(present))
        if field_name in entry.columns:
            raise ParamsError(f"{registry.where((name, 'columns', field_name))}: {name}.columns.{field_name}: "
                              f"column {column!r} is not in {entry.source.describe()} (columns: {columns})")
        raise DataError(f"{entry.source.describe()}: missing column {column!r} that converter {entry.converter} "
                        f"needs (columns: {columns}); map it with `columns: {{{field_name}: <column>}}` in "
                        f"{registry.where((name,))}")


@dataclass
class Sets:
    sft: list[Record]
    grpo: list[Record]
    eval: list[Record]


def split(train: dict[str, list[Record]], evaluation: dict[str, list[Record]], p: PrepareParams) -> Sets:
    """Eval first (a held-out slice where an entry serves both), then SFT and GRPO from what is left."""
    eval_pool = [r for records in evaluation.values() for r in records]
    if len(evaluation) > 1:
        entry_rng(p.seed, "+".join(evaluation), "eval").shuffle(eval_pool)
    eval_set = eval_pool[: p.sizes.eval]
    taken = {r.id for r in eval_set}

    train_pool = [r for records in train.values() for r in records if r.id not in taken]
    if len(train) > 1:
        entry_rng(p.seed, "+".join(train), "train").shuffle(train_pool)
    sets = Sets(sft=train_pool[: p.sizes.sft], grpo=train_pool[p.sizes.sft : p.sizes.sft + p.sizes.grpo],
                eval=eval_set)
    check_no_leakage(sets)
    for name in ("sft", "grpo", "eval"):
        if not getattr(sets, name):
            key = "eval" if name == "eval" else "train"
            raise DataError(f"prepare: the {name} set is empty: the sources of prepare.{key} have no rows left "
                            f"for it (prepare.sizes.{name}: {getattr(p.sizes, name)})")
    return sets


def check_no_leakage(sets: Sets) -> None:
    """Fail when a normalised question is in eval and in SFT or GRPO: eval must never see training data."""
    eval_questions = {normalize_question(r.question): r.id for r in sets.eval}
    clashes = [(r.id, eval_questions[q]) for r in (*sets.sft, *sets.grpo)
               if (q := normalize_question(r.question)) in eval_questions]
    if clashes:
        shown = "; ".join(f"train {a} = eval {b}" for a, b in clashes[:5])
        raise DataError(f"prepare: {len(clashes)} question(s) appear in both train and eval ({shown}); "
                        f"remove them from one source, or draw eval from a held-out slice of the same entry")
