"""Content hashes of files and folders: what identifies data, a base model or weights apart from their path.

A leaf: lineage, checkpoints, models and the eval cache all ask it, and a stage that only fingerprints its
inputs (prepare through checkpoints) must not depend on the lineage module for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """A file's sha256, read in 1 MiB blocks so a multi-GB weights file never sits in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
