"""Lineage: what a model folder was built from, so any later stage can rebuild or describe it.

Every model folder the pipeline writes (models/sft, models/grpo, models/merged) holds a
``lineage.json``. It is the only way a stage learns about the stages before it (DESIGN:
"a stage knows the previous stage only through its outs on disk"), so it carries what a
rebuild needs — the base (id or path, and revision), the kind of weights in the folder
(``full`` or a ``lora`` adapter), the parent model an adapter applies to — and what a reader
needs to trust a result: data hash, library versions, resolved params of the stage. The git
commit a stage ran at is the run record beside the folder (``models/sft.run.json``, write_run):
inside, it would change the folder's hash whenever the same weights are rebuilt at a new commit.

Layout (keys other stages rely on are marked *)::

    {"stage": "train_sft",
     "kind": "lora" | "full",                                  *
     "backtrack_token": "<|backtrack|>", "backtrack_id": 512,   *
     "retraction": {"unit": "token" | "step" | "retry"},      *  (sft.backtrack.unit; grpo and merge copy it;
                                    # read by backtrack.retraction.unit_of, absent = token)
     "vocab_rows": 513,             # rows of the embedding matrix the weights expect
     "base": {"name_or_path": "...", "path": "base" | null, "revision": "..." | null,   *
              "sha256": "..." (a local folder's files), "gguf": {"file": "...", "sha256": "..."} (a GGUF base)},
     "parent": null | {"path": "models/sft", "lineage": {...}},  *  (what an adapter sits on)
     "data": {"path": "data/prepared/sft.jsonl", "sha256": "..."},
     "mistakes": {"kind": "plausible", "rate": 0.3, "placement": "example", "per_example": 1,
                  "check_steps": false},  # train_sft, from prepare's meta.json: eval's probe injects this kind
     "lengths": {"max_completion_tokens": 41, "max_backtracks": 20, ...},  # train_sft: what generation must
                                    # leave room for, and the most backtracks one example carried
     "rollout_backtrack_bias": 0.0, # train_grpo: the backtrack logit bias of its rollouts (never of the model)
     "end_of_turn": "<|im_end|>",   # train_sft: the token SFT targets end with (the chat template's)
     "versions": {"torch": "2.13.0+cpu", "transformers": ..., "trl": ..., "peft": ..., ...},
     "params": {...resolved params of the stage...}}

``base.path`` is relative to the folder holding the lineage (the built-in model is saved
inside the out, so the folder stays self-contained); ``parent.path`` is as the stage saw
it (relative to the repository root, where DVC runs stages).

One class reads and builds records: ``Lineage.read(folder)`` answers what later stages ask
(kind, token, ``lengths``, ``base_location()``, ``nearest(key)`` up the parent chain, ...);
``Lineage.root(base, ...)`` is train_sft's record, ``upstream.child(out_dir, ...)`` the record
of a model made from upstream (train_grpo, merge), its base re-pointed in one place. The
retraction unit and the probe's kind are read through it (backtrack.retraction.unit_of,
diagnostics.trained_kind), where their defaults live. Older folders load as they are: every
key is read with its absence in mind.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmhalluc.content_hash import file_sha256, folder_sha256
from llmhalluc.errors import DataError

LINEAGE_FILE = "lineage.json"
KINDS = ("full", "lora")


class Lineage:
    """One model folder's lineage.json, read once: what it records, and what it inherits from its parents.

    The one place a record is read (``Lineage.read``) and built (``Lineage.root`` for a model trained
    from a base, ``child`` for one made from this model). A folder without lineage (a hub model, a
    folder from elsewhere) reads as an empty Lineage: false, and every answer None.
    """

    def __init__(self, record: Mapping[str, Any] | None = None, folder: str | Path | None = None) -> None:
        self.record: dict[str, Any] = dict(record or {})
        self.folder = None if folder is None else str(folder)  # as the stage saw it: a child records it as parent.path

    @classmethod
    def read(cls, folder: str | Path) -> Lineage:
        """The folder's lineage (empty when it has none); DataError when its lineage.json is broken."""
        path = Path(folder) / LINEAGE_FILE
        if not path.is_file():
            return cls(folder=folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); rerun the stage that wrote {folder}") from exc
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise DataError(f"{path}: 'kind' must be one of {', '.join(KINDS)}; rerun the stage that wrote {folder}")
        return cls(data, folder)

    @classmethod
    def of(cls, lineage: Lineage | Mapping[str, Any] | None, folder: str | Path | None = None) -> Lineage:
        """A Lineage from what a caller holds: one already, a record as a dict (a parent's, a test's), or None."""
        if isinstance(lineage, Lineage):
            return lineage if folder is None else cls(lineage.record, folder)
        return cls(lineage, folder)

    def __bool__(self) -> bool:
        return bool(self.record)

    def __repr__(self) -> str:
        return f"Lineage({self.folder!r}, stage={self.record.get('stage')!r})"

    # ----------------------------------------------------------------------- what later stages ask

    @property
    def kind(self) -> str | None:
        return self.record.get("kind")

    @property
    def backtrack_token(self) -> str | None:
        return self.record.get("backtrack_token")

    @property
    def backtrack_id(self) -> int | None:
        return self.record.get("backtrack_id")

    @property
    def vocab_rows(self) -> int | None:
        return self.record.get("vocab_rows")

    @property
    def base(self) -> dict[str, Any]:
        return self.record.get("base") or {}

    @property
    def data(self) -> dict[str, Any] | None:
        return self.record.get("data")

    @property
    def run(self) -> dict[str, Any]:
        """The run record beside the folder (write_run: commit, dirty), {} when there is none. An older folder
        holds git_commit / git_dirty in its lineage.json itself."""
        path = run_path(self.folder) if self.folder else None
        if path is None or not path.is_file():
            return {k: self.record[k] for k in ("git_commit", "git_dirty") if k in self.record}
        return json.loads(path.read_text(encoding="utf-8"))

    @property
    def parent(self) -> Lineage | None:
        """The model this one was made from (its folder as the stage saw it, and its record); None for a root."""
        parent = self.record.get("parent")
        if not isinstance(parent, Mapping):
            return None
        return Lineage(parent.get("lineage"), parent.get("path"))

    def chain(self) -> list[dict[str, Any]]:
        """The records from the oldest stage to this one (base -> sft -> grpo -> ...)."""
        records, node = [], self
        while node:
            records.append(node.record)
            node = node.parent
        return records[::-1]

    def nearest(self, *key: str) -> Any:
        """The value this record holds under key (a path of keys: ``nearest("retraction", "unit")``), else its
        nearest ancestor's (GRPO and merge records point at the SFT record as their parent), else None."""
        node: Lineage | None = self
        while node:
            value: Any = node.record
            for part in key:
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                return value
            node = node.parent
        return None

    @property
    def lengths(self) -> dict[str, Any] | None:
        """The `lengths` SFT recorded (length_record), from the nearest stage up the chain (None: no SFT lineage)."""
        return self.nearest("lengths")

    def warn_if_cut(self, limit: int, key: str, log: Callable[[str], None]) -> bool:
        """Warn (naming key) when a generation limit is shorter than the longest completion SFT trained on:
        a late backtrack or the answer of such a completion would be cut off, and read as the model's failure."""
        longest = (self.lengths or {}).get("max_completion_tokens")
        if longest is None or limit >= longest:
            return False
        log(f"warning: {key} {limit} is shorter than the longest SFT completion ({longest} tokens, backtracks and "
            f"end of turn included): completions that long are cut off; raise {key} to at least {longest}")
        return True

    def base_location(self) -> tuple[str, str | None]:
        """Where to load the base from: (id or path, revision)."""
        base = self.base
        if base.get("path"):
            return str(Path(self.folder) / base["path"]), None
        if not base.get("name_or_path"):
            raise DataError(f"{Path(self.folder) / LINEAGE_FILE}: no base recorded; "
                            f"rerun the stage that wrote {self.folder}")
        return base["name_or_path"], base.get("revision")

    # ----------------------------------------------------------------------- what a new model records

    @staticmethod
    def root(base: dict[str, Any], *, data: dict[str, Any] | None, token: str, token_id: int | None, unit: str,
             vocab_rows: int, **facts: Any) -> dict[str, Any]:
        """The record of a model trained from a base (train_sft): no parent; facts are the stage's own
        (lengths, mistakes, end of turn, ...)."""
        return _model_record(base, None, data=data, token=token, token_id=token_id, unit=unit, vocab_rows=vocab_rows,
                             **facts)

    def child(self, out_dir: str | Path, *, data: dict[str, Any] | None, token: str, token_id: int | None, unit: str,
              vocab_rows: int, **facts: Any) -> dict[str, Any]:
        """The record of a model made from this one and written to out_dir (train_grpo, merge): this model is its
        parent, and its base is this one's, re-pointed from this folder to out_dir (or this folder itself, for
        a model without lineage)."""
        if self:
            base = dict(self.record["base"])
            if base.get("path"):  # a copy inside this folder (the built-in base): the path from out_dir
                base["path"] = os.path.relpath(Path(self.folder) / base["path"], out_dir)
        else:
            base = base_record(self.folder)
        parent = {"path": self.folder, "lineage": self.record or None}
        return _model_record(base, parent, data=data, token=token, token_id=token_id, unit=unit,
                             vocab_rows=vocab_rows, **facts)


def _model_record(base: dict[str, Any], parent: dict[str, Any] | None, *, data: dict[str, Any] | None, token: str,
                  token_id: int | None, unit: str, vocab_rows: int, **facts: Any) -> dict[str, Any]:
    """The keys every model folder records, laid out once (the module docstring's layout)."""
    return {"backtrack_token": token, "backtrack_id": token_id,
            "retraction": {"unit": unit},  # rewards, eval and the probe resolve by it (backtrack.retraction.unit_of)
            "vocab_rows": vocab_rows, "base": base, "parent": parent, "data": data, **facts}


def write_lineage(folder: str | Path, lineage: dict[str, Any]) -> Path:
    """lineage.json into folder: the record as given (Lineage.root / child, with the stage, the kind and the
    resolved params), and the versions of the libraries that ran it."""
    if lineage.get("kind") not in KINDS:
        raise ValueError(f"lineage kind must be one of {KINDS}, got {lineage.get('kind')!r}")
    if not isinstance(lineage.get("backtrack_token"), str):
        raise ValueError("lineage needs the backtrack_token string (eval and rewards read it)")
    path = Path(folder) / LINEAGE_FILE
    lineage = {**lineage, "versions": library_versions()}
    path.write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


#: The libraries whose versions decide the numbers a run gives (float kernels, trainer defaults).
VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


def library_versions() -> dict[str, str | None]:
    """Python's and each library's installed version: same params and seed repeat a result only
    on the same versions (and machine), so every model records them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def length_record(examples: list[dict[str, list[int]]], prompt_lengths: list[int],
                  max_length: int | None, *, backtrack_id: int) -> dict[str, int]:
    """Token lengths of the SFT examples, as trained: the longest completion (what GRPO and eval
    must be able to generate: errors, backtracks and the end-of-turn token included), how
    many examples max_length cuts, and the most backtrack tokens one example carries (what
    grpo.rewards.backtrack.max_backtracks: auto is sized from)."""
    totals = [len(e["input_ids"]) for e in examples]
    completions = [total - prompt for total, prompt in zip(totals, prompt_lengths, strict=True)]
    return {
        "max_completion_tokens": max(completions, default=0),
        "max_example_tokens": max(totals, default=0),
        "truncated_examples": sum(1 for t in totals if max_length is not None and t > max_length),
        "max_backtracks": max((sum(1 for i in e["input_ids"] if i == backtrack_id) for e in examples), default=0),
    }


def warn_if_truncated(lengths: dict[str, int], max_length: int | None, examples: int,
                      log: Callable[[str], None]) -> bool:
    """Warn when sft.max_length cuts SFT examples (length_record's count): their ends, answer and end of turn
    included, are not trained on."""
    if not lengths["truncated_examples"]:
        return False
    log(f"warning: sft.max_length {max_length} cuts {lengths['truncated_examples']} of {examples} SFT examples "
        f"(longest {lengths['max_example_tokens']} tokens): their ends, answer and end of turn included, are not "
        "trained on; raise sft.max_length")
    return True


def data_record(path: str | Path) -> dict[str, str]:
    """What identifies the training data: its path and content hash."""
    return {"path": str(path), "sha256": file_sha256(path)}


#: What the pipeline itself writes into a checkout: DVC's lock and the .gitignore entries it adds for outs, the
#: metrics, curves and plots (git-tracked in older checkouts; the outs themselves are git-ignored). A change
#: there is a run's result, not a change to the code or params that ran, so it does not make a run dirty.
PIPELINE_WRITES = ("dvc.lock", "dvclive", "metrics", "plots", "**/.gitignore")


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    """The commit the code ran at (None outside a git checkout) and whether tracked files other than the
    pipeline's own writes (PIPELINE_WRITES) differed from it."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    ignored = [f":(top,exclude,glob){path}" if "*" in path else f":(top,exclude){path}" for path in PIPELINE_WRITES]
    dirty = None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                                 *ignored))
    return {"git_commit": commit, "git_dirty": dirty}


#: Beside a model folder (models/sft -> models/sft.run.json): the run record, see write_run.
RUN_SUFFIX = ".run.json"


def run_path(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    return out.with_name(out.name + RUN_SUFFIX)


def write_run(out_dir: str | Path, stage: str) -> Path:
    """The run record of a model folder: the stage, the commit it ran at and whether the code or params differed
    from it (git_state), in `<out_dir>.run.json`, its own out in dvc.yaml.

    Beside the folder, not in it: the folder's content hash (what DVC compares for the stages after it) then
    depends on the weights and what made them, never on when they were made, so the same weights rebuilt at
    another commit leave train_grpo, merge and eval as they were. dvc checkout and the run-cache restore it
    with the folder it describes.
    """
    from llmhalluc.outputs import write_atomically

    path = run_path(out_dir)
    write_atomically(path, json.dumps({"stage": stage, **git_state()}, indent=2, sort_keys=True) + "\n")
    return path


def hub_revision(name_or_path: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit hash of the cached snapshot a hub id resolves to, when it can be known offline.

    A local folder has no revision (None). For a hub id the snapshot folder name in the HF
    cache *is* the commit hash; a model card that records it lets someone load exactly
    those weights again (``from_pretrained(id, revision=...)``).
    """
    if Path(name_or_path).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name_or_path, "config.json", cache_dir=cache_dir)
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def base_record(name_or_path: str, *, saved_as: str | None = None, revision: str | None = None,
                loaded_from: str | Path | None = None, gguf: dict[str, str] | None = None) -> dict[str, Any]:
    """The lineage's ``base`` entry; ``saved_as`` is a path inside the out where a copy of the base lives.

    ``loaded_from`` is the local folder the weights were read from (a local base, the built-in
    model's folder, a GGUF's dequantized cache): its files are hashed into ``sha256``. ``gguf`` is
    ``{"file", "sha256"}`` of a GGUF base, which a rebuild dequantizes again if its cache is gone.
    """
    record: dict[str, Any] = {
        "name_or_path": name_or_path,
        "path": saved_as,
        "revision": revision if revision is not None else (None if saved_as or gguf else hub_revision(name_or_path)),
    }
    if loaded_from is not None and Path(loaded_from).is_dir():
        record["sha256"] = folder_sha256(loaded_from)
    if gguf is not None:
        record["gguf"] = dict(gguf)
    return record


def hub_id(base: dict[str, Any]) -> str | None:
    """The base's hub id (``org/name``), or None for a built-in, local, packaged or GGUF base."""
    import re

    name = base.get("name_or_path") or ""
    if base.get("path") or base.get("gguf") or base.get("sha256") or Path(name).expanduser().exists():
        return None
    return name if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) else None


# --------------------------------------------------------------------------- reads of a record held as a dict
# For callers that hold the record itself rather than a Lineage (stages/eval.py, llmhalluc/evaluation.py).


def read_lineage(folder: str | Path) -> dict[str, Any] | None:
    """The folder's lineage record, or None when it has none (Lineage.read)."""
    return Lineage.read(folder).record or None


def base_location(folder: str | Path, lineage: Mapping[str, Any]) -> tuple[str, str | None]:
    """Lineage.base_location of a record read from folder."""
    return Lineage(lineage, folder).base_location()


def warn_if_cut(lineage: Mapping[str, Any] | None, limit: int, key: str, log: Callable[[str], None]) -> bool:
    """Lineage.warn_if_cut of a record (None: a model without lineage, nothing to compare)."""
    return Lineage.of(lineage).warn_if_cut(limit, key, log)
