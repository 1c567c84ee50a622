"""merge: params.yaml[merge] + models/grpo -> models/merged, one plain HF model folder.

The trained result is rebuilt as its lineage records it (base -> SFT -> GRPO, each LoRA
adapter merged with peft's merge_and_unload in float32; a full fine-tune passes through)
and saved in merge.dtype. The folder loads with AutoModelForCausalLM.from_pretrained
alone: safetensors weights, config, generation config, the tokenizer with the backtrack
token and chat template, and a README.md model card recording how it was built.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmhalluc.backtrack.token import DEFAULT_TOKEN
from llmhalluc.outputs import staged_output
from llmhalluc.params import Section, resolved, write_resolved
from llmhalluc.stage import run_stage


def main(section: Section) -> None:
    import torch

    from llmhalluc import lineage, models
    from llmhalluc.backtrack.retraction import unit_of

    p = section.project
    source = lineage.Lineage.read(Path(p.model_dir))
    # float32 for the merge itself: adding a low-rank update in bf16 rounds most of it away.
    model, tokenizer = models.load_model_and_tokenizer(source.folder, dtype="float32")
    models.refuse_quantised(model, source.folder)
    model.to(getattr(torch, p.dtype))
    params = resolved(section)
    merged = {"stage": "merge", "kind": "full", **source.child(
        p.out_dir, data=source.data, token=source.backtrack_token or DEFAULT_TOKEN, token_id=source.backtrack_id,
        unit=unit_of(source),  # eval resolves the merged model as it was trained
        vocab_rows=models.vocab_rows(model)), "params": params}

    with staged_output(p.out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_resolved(params, staging)
        lineage.write_lineage(staging, merged)
        (staging / "README.md").write_text(model_card(merged, p.out_dir), encoding="utf-8")
    lineage.write_run(p.out_dir, "merge")  # the commit it ran at, beside the folder (not in its hash)
    kinds = " -> ".join(f"{node['stage']} ({node['kind']})" for node in lineage.Lineage(merged).chain())
    print(f"merge: {kinds} -> {p.out_dir} ({p.dtype})")


def model_card(merged: dict, out_dir: str) -> str:
    """README.md: what the model is, how to load it, and exactly how it was built.

    Nothing in it changes with the commit it was built at (that is the run record beside each folder,
    lineage.write_run): the same weights keep the same card, and the folder its hash."""
    from llmhalluc.lineage import Lineage, hub_id, run_path

    nodes = Lineage(merged).chain()
    folders = [*(node["parent"]["path"] for node in nodes[1:]), out_dir]  # each record's folder, as its child saw it
    base = merged["base"]
    hub_base = hub_id(base)  # a local path or a GGUF is no hub id: the card then names no base_model
    front = ["---", "library_name: transformers", "tags: [llmhalluc, backtracking, trl, grpo]"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    token = merged["backtrack_token"]
    lines = [
        *front, "",
        "# llmhalluc merged model", "",
        f"A causal LM trained by the llmhalluc pipeline to emit `{token}` (id {merged['backtrack_id']}), a token",
        "that deletes the token before it. Resolve backtracks on the generated ids before reading the answer.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)  # has the backtrack token and the chat template",
        "```", "",
        "## Lineage", "",
        f"- base: `{base['name_or_path']}`, revision `{base.get('revision') or 'n/a (local or built-in)'}`"
        + (f", GGUF `{base['gguf']['file']}` sha256 `{base['gguf']['sha256']}`" if base.get("gguf") else "")
        + (f", files sha256 `{base['sha256']}`" if base.get("sha256") else ""),
    ]
    for node, folder in zip(nodes, folders, strict=True):
        data = node.get("data") or {}
        lines.append(
            f"- {node['stage']}: {node['kind']} weights; data `{data.get('path', 'n/a')}` sha256 "
            f"`{data.get('sha256', 'n/a')}`; git commit in `{run_path(folder).as_posix()}`"
        )
    # No metrics here: eval runs after merge, so its metrics/eval.json is a later stage's out. Reading it
    # would make this out depend on an undeclared, possibly stale file (a DAG cycle if it were declared).
    lines += ["", "## Evaluation", "",
              "The `eval` stage runs on this folder after it is written: see `dvc metrics show` (metrics/eval.json)."]
    lines += ["", "## Resolved params of every stage", ""]
    for node in nodes:
        lines += [f"### {node['stage']}", "", "```json", json.dumps(node.get("params"), indent=2, sort_keys=True),
                  "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_stage("merge", main, resolved)
