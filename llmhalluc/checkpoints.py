"""Resuming a killed training run from its last *complete* checkpoint, and only if it is the same run.

The checkpoint folder (`output_dir`, e.g. checkpoints/sft) is the stage's scratch, git-ignored and no
DVC out, so it survives a `kill -9` and the next `dvc repro` (DVC deletes a stage's outs before it
runs; declaring the folder `persist: true` instead would keep the stage out of DVC's run-cache). Two
things can go wrong with naive resuming (transformers' `get_last_checkpoint`):

- the newest checkpoint may be half written (the process died while saving) — we skip
  any folder without its trainer state, weights, optimizer and scheduler;
- the checkpoints may come from a run with other params or data (`dvc exp run -S ...`
  changed something and the old run was killed) — a fingerprint file records what the
  checkpoints belong to; a mismatch starts fresh, and says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "run_fingerprint.json"
#: Under output_dir, where each rank records the first batch it trained on (training_run.announce_shard).
SHARDS_DIR = "shards"
#: Under output_dir, where DVCLive writes while the run trains (training_run.Run.work_dir): published at the end.
CURVES_DIR = "dvclive"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
_STATE = ("trainer_state.json", "optimizer.pt", "scheduler.pt")

#: Keys that do not change what is trained: a resumed run may differ in them.
NEUTRAL_KEYS = frozenset({
    "output_dir", "model_dir", "save_steps", "save_total_limit", "logging_steps", "logging_first_step",
    "report_to", "disable_tqdm", "log_completions", "num_completions_to_print", "dataloader_num_workers",
})


def fingerprint(resolved_params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: resolved params (less NEUTRAL_KEYS) and the inputs' hashes."""
    params = {k: v for k, v in resolved_params.items() if k not in NEUTRAL_KEYS}
    text = json.dumps({"params": params, "inputs": inputs}, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "inputs": inputs}


def model_identity(folder: str | Path) -> str:
    """A start model's part of the fingerprint: its safetensors files by content (a new SFT model is a new
    run); a name that is no folder (a hub id) stands for itself."""
    from llmhalluc.content_hash import file_sha256

    path = Path(folder)
    if not path.is_dir():
        return str(folder)
    files = sorted(path.rglob("*.safetensors"))
    return ",".join(f"{f.relative_to(path)}:{file_sha256(f)}" for f in files)


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint the Trainer finished writing: trainer state (written last) parses, weights and optimizer exist."""
    state = checkpoint / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return any((checkpoint / w).is_file() for w in _WEIGHTS) and all((checkpoint / f).is_file() for f in _STATE)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def resume_point(output_dir: str | Path, run: dict[str, Any], log=print) -> str | None:
    """The checkpoint to resume from, or None to start fresh; clears checkpoints of another run.

    Writes the fingerprint so the checkpoints this run saves are known to belong to it.
    """
    folder = Path(output_dir)
    found = checkpoints(folder)
    marker = folder / FINGERPRINT_FILE
    recorded = None
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("sha256")
        except ValueError:
            recorded = None
    if found and recorded != run["sha256"]:
        why = "no fingerprint" if recorded is None else "other params or data"
        log(f"resume: {len(found)} checkpoint(s) in {folder} belong to another run ({why}); starting fresh")
        for path in found:
            shutil.rmtree(path)
        found = []
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    for path in reversed(found):
        if is_complete(path):
            log(f"resume: resuming from {path} (last complete checkpoint)")
            return str(path)
        log(f"resume: removing {path}: incomplete (the run died while saving it)")
        shutil.rmtree(path)  # the resumed run will save this step again
    return None


def clean(output_dir: str | Path) -> None:
    """After a finished run: its checkpoints, fingerprint, shard records and curves as written are no longer
    needed (the model and its curves are published), nor are those of a pass it ran in a folder of its own under
    output_dir (a fingerprint marks one: train_sft's first own-errors pass in `clean/`). An emptied output_dir
    goes too: nothing of a finished run is left in the scratch."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    for path in checkpoints(folder):
        shutil.rmtree(path)
    for path in folder.iterdir():
        if path.is_dir() and (path / FINGERPRINT_FILE).is_file():
            shutil.rmtree(path)
    (folder / FINGERPRINT_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder / SHARDS_DIR, ignore_errors=True)  # the ranks' first-batch records, now in lineage
    shutil.rmtree(folder / CURVES_DIR, ignore_errors=True)  # published into the declared DVCLive folder
    if not any(folder.iterdir()):
        folder.rmdir()
