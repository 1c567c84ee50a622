"""merge: params.yaml[merge] + models/grpo -> models/merged, one plain HF model folder.

The folder loads with AutoModelForCausalLM.from_pretrained alone: safetensors
weights in merge.dtype, the tokenizer with the backtrack token and chat
template, and a model card that records how it was built.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.params import RESOLVED_FILE, Section, resolved, write_resolved
from llmhalluc.stage import run_stage, staged_output


def main(section: Section) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = section.project
    source = Path(p.model_dir)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    lineage = json.loads((source / "lineage.json").read_text()) if (source / "lineage.json").is_file() else {}
    stage_params = json.loads((source / RESOLVED_FILE).read_text()) if (source / RESOLVED_FILE).is_file() else {}

    with staged_output(p.out_dir) as staging:
        model.to(getattr(torch, p.dtype)).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_resolved(resolved(section), staging)
        (staging / "lineage.json").write_text(json.dumps({"stage": "merge", "source": str(source),
                                                          "upstream": lineage}, indent=2) + "\n")
        (staging / "README.md").write_text(_model_card(source, lineage, stage_params, p.dtype))
    print(f"merge: {source} -> {p.out_dir} ({p.dtype})")


def _model_card(source: Path, lineage: dict, trained_with: dict, dtype: str) -> str:
    return (
        "---\nlibrary_name: transformers\ntags: [llmhalluc, backtracking]\n---\n\n"
        "# llmhalluc merged model\n\n"
        f"Built by the llmhalluc pipeline from `{source}`; weights saved as {dtype} safetensors.\n"
        f"The tokenizer carries the backtrack token `{lineage.get('backtrack_token', '<|backtrack|>')}`.\n\n"
        "## Lineage\n\n```json\n" + json.dumps(lineage, indent=2) + "\n```\n\n"
        "## Resolved params of the last training stage\n\n```json\n" + json.dumps(trained_with, indent=2)
        + "\n```\n"
    )


if __name__ == "__main__":
    run_stage("merge", main, resolved)
