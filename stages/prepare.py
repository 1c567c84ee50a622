"""prepare: params.yaml[prepare] + configs/datasets.yaml -> data/prepared/{sft,grpo,eval}.jsonl + metrics/prepare.json.

Reads top to bottom: registry, sources to canonical records, held-out split, prompts (and each
step's check, with prepare.check_steps), backtrack augmentation of SFT, then one atomic write (a
failure leaves the previous data/prepared as it was).
"""

from __future__ import annotations

import json
from pathlib import Path

from llmhalluc.datasets.augment import add_errors
from llmhalluc.datasets.records import chat_prompt, cycle_collection_paused, write_jsonl, write_meta
from llmhalluc.datasets.registry import load_registry
from llmhalluc.datasets.splits import Drops, entry_rng, load_entry, split
from llmhalluc.datasets.step_check import with_check
from llmhalluc.outputs import staged_output
from llmhalluc.params import Section, resolved, write_resolved
from llmhalluc.stage import run_stage

METRICS = Path("metrics/prepare.json")


def main(section: Section) -> None:
    with cycle_collection_paused():  # linear in rows (llmhalluc.datasets.records)
        _prepare(section)


def _prepare(section: Section) -> None:
    p = section.project
    registry, registry_file = load_registry(p.registry)

    # Each entry once, on its own seeded stream; a generator makes as many rows as its sets can take.
    drops = Drops()
    records = {}
    for name in dict.fromkeys([*p.train, *p.eval]):
        wanted = (p.sizes.sft + p.sizes.grpo if name in p.train else 0) + (p.sizes.eval if name in p.eval else 0)
        records[name] = load_entry(name, registry[name], p, wanted, registry_file, drops)
    sets = split({n: records[n] for n in p.train}, {n: records[n] for n in p.eval}, p)

    every = {"sft": sets.sft, "grpo": sets.grpo, "eval": sets.eval}
    for rows in every.values():
        for record in rows:
            record.prompt = chat_prompt(record.question, p.system_prompt)
            if p.check_steps:  # every set: SFT's targets, GRPO's and eval's gold steps (the probe's context)
                record.steps = [with_check(step) for step in record.steps]
    add_errors(sets.sft, p.backtrack, entry_rng(p.seed, "sft", "augment"))

    stats = _stats(every, drops)
    # What the data teaches about mistakes: train_sft records it in the model's lineage, and eval's probe
    # injects the kind the model trained on.
    mistakes = {"kind": p.backtrack.error_kind, "rate": p.backtrack.error_rate, "placement": p.backtrack.placement,
                "per_example": p.backtrack.errors_per_example, "check_steps": p.check_steps}
    meta = {"abstain_answer": p.abstain_answer, "answer_pattern": p.answer_pattern, "mistakes": mistakes,
            "sources": {name: registry[name].source.describe() for name in records}}
    with staged_output(p.out_dir) as staging:
        for name, rows in every.items():
            write_jsonl(rows, staging / f"{name}.jsonl")
        write_meta(staging, meta)
        write_resolved(resolved(section), staging)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    print(f"prepare: {json.dumps(stats, sort_keys=True)}")


def _stats(sets: dict, drops: Drops) -> dict:
    sft = sets["sft"]
    augmented = [r for r in sft if r.errors]
    return {
        "rows": {name: len(rows) for name, rows in sets.items()},
        "augmented_fraction": round(len(augmented) / len(sft), 4),
        "mean_errors_per_example": round(sum(len(r.errors) for r in sft) / len(sft), 4),
        "answerable_fraction": {name: round(sum(r.answerable for r in rows) / len(rows), 4)
                                for name, rows in sets.items()},
        "mean_steps": round(sum(len(r.steps) for r in sft) / len(sft), 4),
        "dropped": drops.as_dict(),
    }


if __name__ == "__main__":
    run_stage("prepare", main, resolved)
