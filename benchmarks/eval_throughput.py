"""Eval throughput: the default backend (batched greedy decoding) against one-at-a-time `generate`.

    python benchmarks/eval_throughput.py [--model DIR|builtin:tiny-qwen2] [--prompts FILE|generated]
                                         [--examples 200] [--single-examples 16] [--repeats 5]

The baseline is what eval would cost without batching: transformers' `generate`, one prompt at
a time, with eval's decoding options (`decoding.generate_options`). Eval's own path,
`llmhalluc.evaluation.generate_transformers`, is timed at batch_size 1 (its greedy loop
without a batch to share), eval.batch_size, and the whole set in one batch, on the same
prompts, greedy. The figure is the ratio of examples per second, all paths measured in
this run, in `--repeats` interleaved repetitions (best and median reported, wall-clock
and CPU time). The model is models/merged if
it exists, else the built-in tiny model (untrained) built into a temporary folder;
the prompts are data/prepared/eval.jsonl if it holds enough, else problems of the
built-in task made the way `prepare` makes them. `--model` and `--prompts` pick one
of them whatever exists. Prints a table and writes JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llmhalluc import decoding, evaluation  # noqa: E402
from llmhalluc.backtrack.token import add_backtrack_token  # noqa: E402
from llmhalluc.datasets.records import Record, chat_prompt, read_jsonl  # noqa: E402
from llmhalluc.datasets.registry import load_registry  # noqa: E402
from llmhalluc.datasets.splits import Drops, load_entry  # noqa: E402
from llmhalluc.models import load_model_and_tokenizer  # noqa: E402
from llmhalluc.params.sections import BUILTIN_TINY, EvalParams, PrepareParams  # noqa: E402
from llmhalluc.tiny_model import build_tiny_model  # noqa: E402

PREPARED = ROOT / "data" / "prepared" / "eval.jsonl"
GENERATED = "generated"


def generated(count: int, seed: int) -> list[Record]:
    """Problems of the built-in task, made the way `prepare` makes them (registry entry, generator, converter).

    Going through prepare's own functions rather than calling the generator keeps this script in step
    with what the pipeline feeds a model (a bare generator call broke silently when its API changed).
    """
    p = PrepareParams(seed=seed)
    registry, registry_file = load_registry(ROOT / p.registry)
    return load_entry("arithmetic", registry["arithmetic"], p, count, registry_file, Drops())[:count]


def prompts_for(count: int, source: str | None) -> tuple[list[list[dict]], str]:
    """`count` chat prompts: from a prepared eval.jsonl (`source`, or data/prepared's when it holds enough),
    else generated."""
    if source != GENERATED:
        path = Path(source) if source else PREPARED
        records = read_jsonl(path) if path.is_file() else []
        if len(records) >= count:
            return [r.prompt for r in records[:count]], str(path)
        if source:
            raise SystemExit(f"--prompts {source}: {len(records)} prompts there, fewer than --examples {count}")
    system = PrepareParams().system_prompt
    return [chat_prompt(r.question, system) for r in generated(count, seed=1)], "generated (built-in arithmetic task)"


def model_folder(choice: str | None, scratch: Path) -> tuple[str, str]:
    """(folder, label): `choice` as given, the built-in tiny model for BUILTIN_TINY, and by default
    models/merged if it exists, else the built-in one."""
    merged = ROOT / "models" / "merged"
    if choice and choice != BUILTIN_TINY:
        return choice, choice
    if choice is None and (merged / "config.json").is_file():
        return str(merged), "models/merged"
    folder = build_tiny_model(scratch / "tiny", [f"{r.question} {r.solution()}" for r in generated(500, seed=2)])
    model, tokenizer = load_model_and_tokenizer(str(folder), dtype="float32")
    add_backtrack_token(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder), "built-in tiny model (untrained, built into a temp folder)"


def generate_one(model, tokenizer, prompt: list[int], sampling: evaluation.Sampling) -> list[int]:
    """One prompt's completion by transformers' generate with eval's decoding options: the baseline."""
    stops = evaluation.stop_ids(tokenizer, model.generation_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    input_ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             **decoding.generate_options(max_new_tokens=sampling.max_new_tokens, stops=stops,
                                                         pad_id=pad_id))
    return evaluation.cut_at_stop(out[0, len(prompt):].tolist(), stops)


def measure(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result). CPU time is what contention on a shared
    machine disturbs least; wall time is what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (tests/test_readme_commands.py parses the README's invocation with it)."""
    defaults = EvalParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=f"model folder, or {BUILTIN_TINY} for the untrained built-in model "
                        "(default: models/merged if it exists, else the built-in model)")
    parser.add_argument("--prompts", help=f"a prepared eval.jsonl, or {GENERATED!r} for problems made like prepare's "
                        "(default: data/prepared/eval.jsonl if it holds --examples prompts, else generated)")
    parser.add_argument("--examples", type=int, default=200, help="prompts generated by the batched paths")
    parser.add_argument("--single-examples", type=int, default=16, help="prompts generated one at a time")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="eval.batch_size to time")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads for both paths (default: torch's own); "
                        "1 keeps a shared, loaded machine from oversubscribing")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_throughput.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        path, model_label = model_folder(args.model, Path(scratch))
        model, tokenizer = load_model_and_tokenizer(path, dtype="float32")
        model.eval()
        messages, prompt_source = prompts_for(args.examples, args.prompts)
        prompts = [evaluation.prompt_ids(tokenizer, m) for m in messages]
        sampling = evaluation.Sampling(max_new_tokens=args.max_new_tokens)
        single_prompts = prompts[: args.single_examples]
        paths = {  # name -> (examples, how to generate them)
            "one at a time": (len(single_prompts), lambda: [generate_one(model, tokenizer, p, sampling)
                                                            for p in single_prompts]),
            "eval's loop, batch 1": (len(single_prompts), lambda: [evaluation.generate_transformers(
                model, tokenizer, [p], batch_size=1, sampling=sampling)[0] for p in single_prompts]),
            f"batched, batch {args.batch_size}": (len(prompts), lambda: evaluation.generate_transformers(
                model, tokenizer, prompts, batch_size=args.batch_size, sampling=sampling)),
            f"batched, batch {len(prompts)}": (len(prompts), lambda: evaluation.generate_transformers(
                model, tokenizer, prompts, batch_size=len(prompts), sampling=sampling)),
        }
        for _, run in paths.values():  # warm-up: first calls allocate and pick kernels
            run()
        # Interleaved repetitions: a burst of load from another process hits every path alike.
        wall: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        outputs: dict[str, object] = {}
        for _ in range(args.repeats):
            for name, (_, run) in paths.items():
                seconds, cpu_seconds, outputs[name] = measure(run)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
        device = str(next(model.parameters()).device)

    baseline = "one at a time"
    table = {}
    for name, (n, _) in paths.items():
        table[name] = {
            "examples": n,
            "seconds": wall[name],
            "cpu_seconds": cpu[name],
            "examples_per_s_best": n / min(wall[name]),
            "examples_per_s_median": n / statistics.median(wall[name]),
            "examples_per_cpu_s_median": n / statistics.median(cpu[name]),
        }
    base = table[baseline]
    for row in table.values():
        row["speedup_median"] = row["examples_per_s_median"] / base["examples_per_s_median"]
        row["speedup_best"] = row["examples_per_s_best"] / base["examples_per_s_best"]
        row["speedup_cpu_median"] = row["examples_per_cpu_s_median"] / base["examples_per_cpu_s_median"]
    default_name = f"batched, batch {args.batch_size}"
    single_out = outputs[baseline]
    result = {
        "model": model_label,
        "prompts": prompt_source,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "mean_completion_tokens": statistics.mean(len(c) for c in outputs[default_name]),
        # eval's batched greedy completions are generate's, token for token
        "same_completions": outputs[default_name][: len(single_out)] == single_out,
        "paths": table,
        "speedup_default_median": table[default_name]["speedup_median"],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }

    print(f"model: {model_label}; prompts: {prompt_source}; greedy, max_new_tokens {args.max_new_tokens}; "
          f"{args.repeats} interleaved repeats; torch threads {result['torch_threads']}; "
          f"load average {result['load_average'][0]:.1f}")
    print(f"{'path':<24}{'examples':>9}{'ex/s median':>13}{'ex/s best':>11}{'x median':>10}{'x best':>9}"
          f"{'x cpu-time':>12}")
    for name, row in table.items():
        print(f"{name:<24}{row['examples']:>9}{row['examples_per_s_median']:>13.1f}{row['examples_per_s_best']:>11.1f}"
              f"{row['speedup_median']:>10.1f}{row['speedup_best']:>9.1f}{row['speedup_cpu_median']:>12.1f}")
    print(f"default backend (eval.batch_size {args.batch_size}) vs one-at-a-time generate: "
          f"{result['speedup_default_median']:.1f}x (median wall); identical completions: {result['same_completions']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
