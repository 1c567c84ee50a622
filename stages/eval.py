"""eval: params.yaml[eval] + models/merged + data/prepared/eval.jsonl -> eval/predictions.jsonl + metrics/eval.json.

Only the held-out eval set is read: eval never runs on training data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.datasets.records import read_jsonl
from llmhalluc.params import Section, resolved, write_resolved
from llmhalluc.stage import run_stage, staged_output


def main(section: Section) -> None:
    from llmhalluc import evaluation, models
    from llmhalluc.training import seed_everything

    p = section.project
    seed_everything(p.seed)
    records = read_jsonl(Path(p.data_dir) / "eval.jsonl")
    model, tokenizer = models.load_model_and_tokenizer(p.model_name_or_path, dtype=p.dtype)
    model.eval()
    lineage_file = Path(p.model_name_or_path) / "lineage.json"
    token = json.loads(lineage_file.read_text()).get("upstream", {}).get("backtrack_token") \
        if lineage_file.is_file() else None
    backtrack_id = tokenizer.convert_tokens_to_ids(token or models.BACKTRACK_TOKEN)

    completions = evaluation.generate_batched(
        model, tokenizer, [r.prompt for r in records], batch_size=p.batch_size, max_new_tokens=p.max_new_tokens,
        do_sample=p.do_sample, temperature=p.temperature, top_p=p.top_p)
    rows = [{"id": r.id, **evaluation.score(ids, r.answer, tokenizer, backtrack_id)}
            for r, ids in zip(records, completions, strict=True)]
    metrics = evaluation.summarize(rows)

    with staged_output(p.out_dir) as staging:
        with (staging / "predictions.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        write_resolved(resolved(section), staging)
    Path(p.metrics_file).parent.mkdir(parents=True, exist_ok=True)
    Path(p.metrics_file).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"eval: {metrics}")


if __name__ == "__main__":
    run_stage("eval", main, resolved)
