"""prepare: params.yaml[prepare] -> data/prepared/{sft,grpo,eval}.jsonl + metrics/prepare.json.

The three sets are drawn from one seeded stream in a fixed order and checked
disjoint by question, so eval never sees a training problem.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.datasets import arithmetic
from llmhalluc.datasets.records import chat_prompt, write_jsonl
from llmhalluc.params import ParamsError, Section, resolved, write_resolved
from llmhalluc.stage import run_stage, staged_output

METRICS = Path("metrics/prepare.json")


def main(section: Section) -> None:
    p = section.project
    rng = random.Random(p.seed)
    # Draw all problems from one stream, drop repeats, then split: held-out eval is disjoint by construction.
    wanted = p.sizes.sft + p.sizes.grpo + p.sizes.eval
    pool, seen = [], set()
    for attempt in range(20):
        for record in arithmetic.generate(wanted, p.arithmetic, rng, prefix=f"a{attempt}"):
            if record.question not in seen:
                seen.add(record.question)
                pool.append(record)
        if len(pool) >= wanted:
            break
    if len(pool) < wanted:
        raise ParamsError(
            f"{section.where('sizes')}: prepare.sizes: {wanted} distinct problems wanted but prepare.arithmetic "
            f"yields only {len(pool)}; raise prepare.arithmetic.max_operand or max_steps, or lower prepare.sizes"
        )
    rng.shuffle(pool)
    splits = {
        "eval": pool[: p.sizes.eval],
        "grpo": pool[p.sizes.eval : p.sizes.eval + p.sizes.grpo],
        "sft": pool[p.sizes.eval + p.sizes.grpo : wanted],
    }
    arithmetic.add_errors(splits["sft"], p.backtrack, rng)
    for records in splits.values():
        for record in records:
            record.prompt = chat_prompt(record.question, p.system_prompt)

    with staged_output(p.out_dir) as staging:
        for name, records in splits.items():
            write_jsonl(records, staging / f"{name}.jsonl")
        write_resolved(resolved(section), staging)

    stats = {name: len(records) for name, records in splits.items()}
    stats["sft_with_errors"] = sum(1 for r in splits["sft"] if r.errors)
    stats["mean_steps"] = round(sum(len(r.steps) for r in pool[:wanted]) / wanted, 4)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    print(f"prepare: {stats}")


if __name__ == "__main__":
    run_stage("prepare", main, resolved)
