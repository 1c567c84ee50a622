"""Lineage: what a model folder was built from, so any later stage can rebuild or describe it.

Every model folder the pipeline writes (models/sft, models/grpo, models/merged) holds a
``lineage.json``. It is the only way a stage learns about the stages before it (DESIGN:
"a stage knows the previous stage only through its outs on disk"), so it carries what a
rebuild needs — the base (id or path, and revision), the kind of weights in the folder
(``full`` or a ``lora`` adapter), the parent model an adapter applies to — and what a reader
needs to trust a result: data hash, git commit, resolved params of the stage.

Layout (keys other stages rely on are marked *)::

    {"stage": "train_sft",
     "kind": "lora" | "full",                                  *
     "backtrack_token": "<|backtrack|>", "backtrack_id": 512,   *
     "retraction": {"unit": "token" | "step" | "retry"},      *  (sft.backtrack.unit; grpo and merge copy it;
                                    # read by backtrack.unit_of, absent = token)
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
     "git_commit": "..." | null, "git_dirty": bool | null,
     "versions": {"torch": "2.13.0+cpu", "transformers": ..., "trl": ..., "peft": ..., ...},
     "params": {...resolved params of the stage...}}

``base.path`` is relative to the folder holding the lineage (the built-in model is saved
inside the out, so the folder stays self-contained); ``parent.path`` is as the stage saw
it (relative to the repository root, where DVC runs stages).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmhalluc.errors import DataError

LINEAGE_FILE = "lineage.json"
KINDS = ("full", "lora")


def read_lineage(folder: str | Path) -> dict[str, Any] | None:
    """The folder's lineage, or None when it has none (a hub model, or a folder from elsewhere)."""
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); rerun the stage that wrote {folder}") from exc
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise DataError(f"{path}: 'kind' must be one of {', '.join(KINDS)}; rerun the stage that wrote {folder}")
    return data


def write_lineage(folder: str | Path, lineage: dict[str, Any]) -> Path:
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


def trained_lengths(upstream: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `lengths` SFT recorded, from the nearest stage up the chain that has them (None: no SFT lineage)."""
    found = [node["lengths"] for node in chain(upstream or {}) if node.get("lengths")]
    return found[-1] if found else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_record(path: str | Path) -> dict[str, str]:
    """What identifies the training data: its path and content hash."""
    return {"path": str(path), "sha256": file_sha256(path)}


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    """The commit the code ran at (None outside a git checkout) and whether tracked files differed from it."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty}


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


def folder_sha256(folder: str | Path) -> str:
    """One hash of a model folder's files (names and contents), for a base that has no hub revision.

    A local base is only a path otherwise: replace the files under it and a lineage that
    names the path would describe another model without anyone noticing.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


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


def base_location(folder: str | Path, lineage: dict[str, Any]) -> tuple[str, str | None]:
    """Where to load a lineage's base from: (id or path, revision)."""
    base = lineage.get("base") or {}
    if base.get("path"):
        return str(Path(folder) / base["path"]), None
    if not base.get("name_or_path"):
        raise DataError(f"{Path(folder) / LINEAGE_FILE}: no base recorded; rerun the stage that wrote {folder}")
    return base["name_or_path"], base.get("revision")


def chain(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """The lineages from the oldest stage to this one (base -> sft -> grpo -> ...)."""
    out = []
    node: dict[str, Any] | None = lineage
    while node:
        out.append(node)
        parent = node.get("parent") or {}
        node = parent.get("lineage")
    return out[::-1]


def nearest(lineage: dict[str, Any] | None, key: str) -> Any:
    """The value a lineage records under key, else its nearest ancestor's (GRPO and merge records point at
    the SFT record as their parent), else None."""
    node = lineage
    while node:
        if node.get(key) is not None:
            return node[key]
        parent = node.get("parent")
        node = parent.get("lineage") if isinstance(parent, dict) else None
    return None


def warn_if_cut(upstream: dict[str, Any] | None, limit: int, key: str, log: Callable[[str], None]) -> bool:
    """Warn (naming key) when a generation limit is shorter than the longest completion SFT trained on:
    a late backtrack or the answer of such a completion would be cut off, and read as the model's failure."""
    lengths = trained_lengths(upstream)
    longest = lengths.get("max_completion_tokens") if lengths else None
    if longest is None or limit >= longest:
        return False
    log(f"warning: {key} {limit} is shorter than the longest SFT completion ({longest} tokens, backtracks and "
        f"end of turn included): completions that long are cut off; raise {key} to at least {longest}")
    return True
