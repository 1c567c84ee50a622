"""Eval diagnostics cost: the default eval with every diagnostic on, against the greedy eval alone.

    python benchmarks/eval_diagnostics.py [--examples 200] [--repeats 1] [--out FILE]

Per model of params.yaml's eval.models (models/sft and models/merged if they exist,
else the built-in tiny model built into a temporary folder), in one run and on
the same loaded model: the greedy eval (batched generation of every held-out
prompt, then scoring) and the diagnostics with params.yaml's eval section as it
is (probe, own errors, sampled, at their default sizes). The figure is
(greedy + diagnostics) / greedy, summed over models, wall-clock and CPU time
(model loading, paid once by both, is left out). With --repeats > 1 the two are
interleaved and the minimum of each is used. Prints a table and writes JSON;
it asserts nothing. The target: at most 2x, so the diagnostics can stay on by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = 2.0


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _records(count: int, scratch: Path) -> tuple[list, str]:
    """The prepared eval records if there are enough, else freshly generated problems of the default task."""
    import random

    from llmhalluc.datasets import arithmetic
    from llmhalluc.datasets.records import Record, chat_prompt, read_jsonl
    from llmhalluc.params.sections import ArithmeticParams, PrepareParams

    prepared = ROOT / "data" / "prepared" / "eval.jsonl"
    if prepared.is_file() and len(records := read_jsonl(prepared)) >= count:
        return records[:count], str(prepared.relative_to(ROOT))
    rows = arithmetic.generate(ArithmeticParams(), random.Random(0))
    system = PrepareParams().system_prompt
    out = []
    for _ in range(count):
        row = next(rows)
        out.append(Record(id=str(row["id"]), question=row["question"], steps=row["steps"], answer=row["answer"],
                          prompt=chat_prompt(row["question"], system)))
    return out, "generated (built-in arithmetic task)"


def _models(params: Any, scratch: Path) -> dict[str, str]:
    present = {name: path for name, path in params.models.items() if (Path(path) / "config.json").is_file()
               or (Path(path) / "adapter_config.json").is_file()}
    if present:
        return present
    import random

    from llmhalluc.backtrack.token import add_backtrack_token
    from llmhalluc.datasets import arithmetic
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.params.sections import ArithmeticParams
    from llmhalluc.tiny_model import build_tiny_model

    rows = arithmetic.generate(ArithmeticParams(), random.Random(1))
    corpus = [f"{r['question']} {' '.join(r['steps'])} The answer is {r['answer']}." for r in
              (next(rows) for _ in range(500))]
    folder = build_tiny_model(scratch / "tiny", corpus)
    model, tokenizer = load_model_and_tokenizer(str(folder), dtype="float32")
    add_backtrack_token(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"tiny (untrained)": str(folder)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="held-out problems of the greedy eval")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions (minimum used)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice, as the stage runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_diagnostics.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    import torch

    from llmhalluc import diagnostics, evaluation
    from llmhalluc.answers import DEFAULT_ABSTAIN, DEFAULT_PATTERN
    from llmhalluc.models import load_model_and_tokenizer
    from llmhalluc.params import load_section
    from llmhalluc.rng import seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine, fewer threads are disturbed less
    os.chdir(ROOT)  # params.yaml's paths are relative to the repo root
    p = load_section("eval", ROOT / "params.yaml", for_run=False).project
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        records, source = _records(args.examples, Path(scratch))
        for name, path in _models(p, Path(scratch)).items():
            model, tokenizer = load_model_and_tokenizer(path, dtype="float32")
            model.eval()
            token = evaluation.backtrack_token(path)
            backtrack_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else -1

            def score(ids, record, tokenizer=tokenizer, backtrack_id=backtrack_id):
                return evaluation.score(ids, gold=record.answer, answerable=record.answerable, tokenizer=tokenizer,
                                        backtrack_id=backtrack_id, pattern=DEFAULT_PATTERN, abstain=DEFAULT_ABSTAIN)

            def greedy(model=model, tokenizer=tokenizer, score=score):
                seed_everything(p.seed)
                prompts = [evaluation.prompt_ids(tokenizer, r.prompt) for r in records]
                sampling = evaluation.Sampling(max_new_tokens=p.max_new_tokens)
                completions = evaluation.generate_transformers(model, tokenizer, prompts, batch_size=p.batch_size,
                                                               sampling=sampling)
                return [score(ids, r) for r, ids in zip(records, completions, strict=True)]

            def diagnose(model=model, tokenizer=tokenizer, score=score, backtrack_id=backtrack_id):
                return diagnostics.diagnose(model, tokenizer, records, backtrack_id=backtrack_id, p=p, score=score)

            greedy_runs, diagnostics_runs = [], []
            for _ in range(args.repeats):
                greedy_runs.append(_timed(greedy))
                diagnostics_runs.append(_timed(diagnose))
            g_wall, g_cpu = min(w for w, _ in greedy_runs), min(c for _, c in greedy_runs)
            d_wall, d_cpu = min(w for w, _ in diagnostics_runs), min(c for _, c in diagnostics_runs)
            rows.append({"model": name, "path": path, "greedy_wall_s": round(g_wall, 3),
                         "diagnostics_wall_s": round(d_wall, 3), "greedy_cpu_s": round(g_cpu, 3),
                         "diagnostics_cpu_s": round(d_cpu, 3)})
            del model

    def ratio(kind: str) -> float:
        greedy_total = sum(r[f"greedy_{kind}_s"] for r in rows)
        return round((greedy_total + sum(r[f"diagnostics_{kind}_s"] for r in rows)) / greedy_total, 3)

    result = {
        "benchmark": "eval_diagnostics", "examples": len(records), "data": source, "repeats": args.repeats,
        "params": {"probe": vars(p.probe), "own_errors": vars(p.own_errors), "sampled": vars(p.sampled),
                   "batch_size": p.batch_size, "max_new_tokens": p.max_new_tokens},
        "rows": rows, "ratio_wall": ratio("wall"), "ratio_cpu": ratio("cpu"), "target": TARGET,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    print(f"eval diagnostics cost on {len(records)} problems ({source}), {args.repeats} repeat(s):")
    print(f"{'model':<18}{'greedy s':>10}{'diagnostics s':>15}{'greedy cpu s':>14}{'diag cpu s':>12}")
    for r in rows:
        print(f"{r['model']:<18}{r['greedy_wall_s']:>10}{r['diagnostics_wall_s']:>15}{r['greedy_cpu_s']:>14}"
              f"{r['diagnostics_cpu_s']:>12}")
    met = "met" if result["ratio_wall"] <= TARGET else "missed"
    print(f"(greedy + diagnostics) / greedy: wall {result['ratio_wall']}x, CPU {result['ratio_cpu']}x "
          f"(target <= {TARGET}x: {met})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
