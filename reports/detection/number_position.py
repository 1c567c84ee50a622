"""Where along a wrong step the decision state could know it is wrong: the held-out linear probe of the
eval probe (`diagnostics.read_sequences` + `cross_fitted_scores`) at two positions of the same items,
the wrong number's last token (the step without its final '.') and the step's end (where the backtrack
is decided), on models of finished DVC experiments (materialised from the DVC cache read-only, as
reports/repair-context/measure.py does).

    python reports/detection/number_position.py ../sweep3 step-syn-2400-seed0 base-2400-seed0 ...

Prints one line per experiment: items, and the AUROC at each position (0.5: nothing to read there).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "reports" / "repair-context"))

import measure  # noqa: E402
import torch  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

from llmhalluc import diagnostics  # noqa: E402
from llmhalluc.datasets.records import read_jsonl  # noqa: E402
from llmhalluc.models import load_model_and_tokenizer  # noqa: E402


def positions(folder: Path, problems: int = 50, seed: int = 0) -> dict:
    model, tokenizer = load_model_and_tokenizer(str(folder / "models/sft"), dtype="float32")
    model.eval()
    lineage = json.loads((folder / "models/sft/lineage.json").read_text())
    backtrack_id = tokenizer.convert_tokens_to_ids(lineage["backtrack_token"])

    items = diagnostics.probe_items(tokenizer, read_jsonl(folder / "data/prepared/eval.jsonl")[:problems],
                                    backtrack_id=backtrack_id, seed=seed, unit=lineage["retraction"]["unit"])
    out: dict = {"items": len(items)}
    for label, cut in (("number", 1), ("step_end", 0)):
        sequences = [i.prompt + i.context + i.wrong for i in items] + [i.prompt + i.context + i.right for i in items]
        spans = [(len(i.prompt + i.context), len(s) - cut) for i, s in zip(items * 2, sequences, strict=True)]
        read = diagnostics.read_sequences(model, sequences, [[] for _ in sequences], token_id=backtrack_id,
                                          batch_size=32, pad_id=diagnostics.pad_id(model, tokenizer), spans=spans)
        states = torch.stack(read.states)
        wrong, right = diagnostics.cross_fitted_scores(states[:len(items)], states[len(items):])
        out[label] = diagnostics.auroc(wrong, right)
    return out


def main() -> None:
    repo = Path(sys.argv[1]).resolve()
    yaml = YAML(typ="safe")
    for name in sys.argv[2:]:
        lock = yaml.load(measure.git(repo, "show", f"{measure.experiment_ref(repo, name)}:dvc.lock"))
        with tempfile.TemporaryDirectory() as scratch:
            for path in ("data/prepared", "models/sft"):
                measure.materialise(repo, lock, path, Path(scratch))
            print(name, json.dumps(positions(Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
