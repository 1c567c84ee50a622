"""Eval's results per model, kept so a model whose inputs did not change is not evaluated again.

A `dvc exp run -S grpo.beta=...` changes the GRPO model only, but DVC re-runs the eval stage as a
whole: it would evaluate the unchanged SFT model again in every experiment. So eval keeps each
model's block (its metrics, predictions and diagnostics rows) here, keyed by everything that
determines it:

- the model: the hash of its folder's files (content_hash.folder_sha256), and for a LoRA adapter folder
  the model it is applied to (its parent's folder, or its base: a local folder by its files, a hub
  model by its recorded revision). A hub id with nothing to pin it is never cached;
- the eval params that change results (all of params.yaml[eval] but where models live, what they
  are called and where outs go), the eval data (eval.jsonl and the answer rules read from
  meta.json) and the machine's numerics (torch device, GPU name);
- the code: every file of the llmhalluc package and the stage script, and the library versions
  (lineage.library_versions).

A block is reused only when the key matches exactly, and eval says so. The cache lives outside
the repository, in `$LLMHALLUC_CACHE_DIR/eval` (default `~/.cache/llmhalluc/eval`), so queued
experiments (`dvc queue start`, each in its own temporary copy of the repo) share it; DVC never
sees it. `LLMHALLUC_EVAL_CACHE=0` turns it off; deleting the folder is always safe.

Why not per-model DVC stages (`foreach` over eval.models) and DVC's own run-cache: the compared
models, their transitions and the one side-by-side metrics file belong to one eval stage (and
eval.models may name hub ids and include_base a model found at run time, which cannot be stage
deps); the key here is stricter than a stage's deps (the model's content, not its path).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llmhalluc.content_hash import folder_sha256
from llmhalluc.lineage import base_location, library_versions, read_lineage
from llmhalluc.outputs import write_atomically

#: The environment switch: 0 / off / false / no turns the cache off (nothing read, nothing written).
SWITCH_ENV = "LLMHALLUC_EVAL_CACHE"
#: Bumped when the layout of a stored block changes, so old entries are never read as new ones.
FORMAT = 1
PACKAGE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in {"0", "off", "false", "no"}


def folder() -> Path:
    """Where blocks are kept: $LLMHALLUC_CACHE_DIR/eval, else ~/.cache/llmhalluc/eval (XDG_CACHE_HOME honoured)."""
    from llmhalluc.params.trl_schema import cache_dir

    return cache_dir() / "eval"


def model_identity(path: str | Path) -> dict[str, Any] | None:
    """What a model folder is, by content: its files' hash, and for an adapter the model it applies to.
    None where that cannot be pinned down (a hub id, an adapter on an unpinned hub base)."""
    folder_path = Path(path)
    if not folder_path.is_dir():
        return None
    identity: dict[str, Any] = {"sha256": folder_sha256(folder_path)}
    lineage = read_lineage(folder_path) or {}
    if lineage.get("kind") == "lora" or (folder_path / "adapter_config.json").is_file():
        parent = (lineage.get("parent") or {}).get("path")
        if parent:
            under = model_identity(parent)
        else:
            name, revision = base_location(folder_path, lineage) if lineage else _adapter_base(folder_path)
            inside = Path(name).resolve().is_relative_to(folder_path.resolve())
            under = {"inside": True} if inside else model_identity(name) or (
                {"hub": name, "revision": revision} if revision else None)
        if under is None:
            return None
        identity["applied_to"] = under
    return identity


def _adapter_base(folder_path: Path) -> tuple[str, str | None]:
    """A PEFT folder without lineage: the base its adapter_config.json names (with its revision, if any)."""
    config = json.loads((folder_path / "adapter_config.json").read_text())
    return config.get("base_model_name_or_path") or "", config.get("revision")


def code_sha256(*extra: str | Path) -> str:
    """One hash of the llmhalluc package's Python files and the given ones (the stage script)."""
    digest = hashlib.sha256()
    files = sorted(PACKAGE.rglob("*.py")) + [Path(p).resolve() for p in extra]
    for path in files:
        digest.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    """What changes a model's numerics besides the code: the device eval runs on."""
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(0)}
    return {"device": "cpu"}


def key(model: dict[str, Any] | None, *, settings: dict[str, Any], data: dict[str, Any], code: str) -> str | None:
    """The cache key of one model's block; None (not cached) for a model without an identity."""
    if model is None:
        return None
    parts = {"format": FORMAT, "model": model, "settings": settings, "data": data, "code": code,
             "libraries": library_versions(), "machine": machine()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load(cache_key: str | None) -> dict[str, Any] | None:
    """The block stored under the key, or None (no key, the cache off, nothing stored, or an unreadable file)."""
    if cache_key is None or not enabled():
        return None
    try:
        return json.loads((folder() / f"{cache_key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store(cache_key: str | None, block: dict[str, Any]) -> Path | None:
    """Keep a block under its key (atomically: parallel experiments may store the same one). A cache that
    cannot be written is not an error: the next eval computes the block again."""
    if cache_key is None or not enabled():
        return None
    path = folder() / f"{cache_key}.json"
    try:
        write_atomically(path, json.dumps(block, ensure_ascii=False) + "\n")
    except OSError:
        return None
    return path
