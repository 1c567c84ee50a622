"""eval: params.yaml[eval] + the compared models + data/prepared/eval.jsonl
-> eval/predictions/<model>.jsonl, eval/predictions.csv, metrics/eval.json, plots/eval/.

Every model in eval.models (by default the SFT model and the merged GRPO model)
answers the same held-out questions with the same decoding, and the metrics are
written one block per model, so `dvc metrics show` puts sft.accuracy beside
grpo.accuracy. Only prepare's held-out eval split is read: eval never runs on
training data. Metric definitions: llmhalluc/evaluation.py.
"""

from __future__ import annotations

import csv
import gc
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmhalluc.answers import DEFAULT_ABSTAIN
from llmhalluc.datasets.records import read_abstain_answer, read_jsonl
from llmhalluc.datasets.splits import normalize_question
from llmhalluc.errors import DataError
from llmhalluc.params import Section, resolved, write_resolved
from llmhalluc.stage import run_stage, staged_output, write_atomically

if TYPE_CHECKING:
    from llmhalluc.evaluation import Sampling
    from llmhalluc.params.sections import EvalParams

#: Columns of the one-row-per-answer CSV, in the order a reader wants them.
CSV_COLUMNS = ["model", "id", "answerable", "gold", "answer", "outcome", "correct", "hallucinated", "backtracks",
               "corrected", "answer_unresolved", "length", "resolved", "raw"]
PLOTTED = ["accuracy", "accuracy_unresolved", "hallucination_rate", "abstention_rate", "backtrack_rate",
           "mean_backtracks"]


def main(section: Section) -> None:
    from llmhalluc import evaluation

    p = section.project
    data_dir = Path(p.data_dir)
    records = read_jsonl(data_dir / "eval.jsonl")
    if not records:
        raise DataError(f"{data_dir / 'eval.jsonl'}: no eval records; raise prepare.sizes.eval")
    _check_held_out(data_dir, records)
    abstain = read_abstain_answer(data_dir, DEFAULT_ABSTAIN)
    compared = dict(p.models)
    if p.include_base:
        compared["base"] = evaluation.base_model(p.base_from)
    sampling = evaluation.Sampling(max_new_tokens=p.max_new_tokens, do_sample=p.do_sample,
                                   temperature=p.temperature, top_p=p.top_p, seed=p.seed)

    predictions, metrics, histograms = {}, {}, {}
    for name, path in compared.items():
        model, tokenizer = _load(p, path)
        backtrack_id = _backtrack_id(tokenizer, path)  # before generating: a broken folder fails fast
        completions = _generate(p, path, model, tokenizer, [r.prompt for r in records], sampling)
        del model
        gc.collect()  # one model in memory at a time
        rows = [{"id": r.id, **evaluation.score(ids, gold=r.answer, answerable=r.answerable, tokenizer=tokenizer,
                                                backtrack_id=backtrack_id, pattern=p.answer_pattern, abstain=abstain)}
                for r, ids in zip(records, completions, strict=True)]
        predictions[name], metrics[name] = rows, evaluation.summarize(rows)
        histograms[name] = evaluation.backtrack_histogram(rows)
        print(f"eval: {name} ({path}): " + ", ".join(f"{k} {v}" for k, v in metrics[name].items()))

    with staged_output(p.out_dir) as staging:
        (staging / "predictions").mkdir()
        for name, rows in predictions.items():
            with (staging / "predictions" / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        with (staging / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({"model": name, **row} for name, rows in predictions.items() for row in rows)
        write_resolved({**resolved(section), "compared": compared, "abstain_answer": abstain}, staging)
    with staged_output(p.plots_dir) as staging:
        _write_csv(staging / "models.csv", ["model", *PLOTTED],
                   [[name, *(m[k] for k in PLOTTED)] for name, m in metrics.items()])
        (staging / "backtracks").mkdir()
        for name, histogram in histograms.items():
            _write_csv(staging / "backtracks" / f"{name}.csv", ["backtracks", "completions"], histogram)
    write_atomically(p.metrics_file, json.dumps(metrics, indent=2) + "\n")


def _load(p: EvalParams, path: str) -> tuple[Any, Any]:
    """(model, tokenizer); vLLM loads its own copy of the weights, so there the model is None."""
    from llmhalluc import models

    if p.backend == "vllm":
        from transformers import AutoTokenizer

        return None, AutoTokenizer.from_pretrained(path)
    model, tokenizer = models.load_model_and_tokenizer(path, dtype=p.dtype)
    model.eval()
    return model, tokenizer


def _generate(p: EvalParams, path: str, model: Any, tokenizer: Any, prompts: list[list[dict]],
              sampling: Sampling) -> list[list[int]]:
    """One model's completion ids for every prompt, through the backend params chose."""
    from llmhalluc import evaluation
    from llmhalluc.training import seed_everything

    seed_everything(p.seed)  # per model: each model's samples do not depend on which models ran before it
    ids = [evaluation.prompt_ids(tokenizer, m) for m in prompts]
    if p.backend == "vllm":
        return evaluation.generate_vllm(path, tokenizer, ids, sampling=sampling, dtype=p.dtype)
    return evaluation.generate_transformers(model, tokenizer, ids, batch_size=p.batch_size, sampling=sampling)


def _backtrack_id(tokenizer: Any, path: str) -> int:
    """The id of the model's backtrack token; -1 (matches nothing) for a model that never learned one."""
    from llmhalluc import evaluation
    from llmhalluc.lineage import read_lineage

    token = evaluation.backtrack_token(path)
    if token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(token)
    if read_lineage(path):
        raise DataError(f"{Path(path) / 'lineage.json'}: records the backtrack token {token!r}, but the tokenizer "
                        f"in {path} does not have it; the folder is incomplete (re-run the stage that wrote it)")
    print(f"eval: {path} has no {token!r} token (a base model?): it is scored with no backtracks", file=sys.stderr)
    return -1


def _check_held_out(data_dir: Path, records: list) -> None:
    """Refuse an eval set that shares a question with the training sets beside it (the original
    project evaluated on its own training split; prepare keeps them disjoint, this keeps it honest)."""
    questions = {normalize_question(r.question): r.id for r in records}
    for split in ("sft", "grpo"):
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            continue
        shared = [(questions[q], t.id) for t in read_jsonl(path) if (q := normalize_question(t.question)) in questions]
        if shared:
            pairs = ", ".join(f"{e} = {t}" for e, t in shared[:5])
            raise DataError(f"{data_dir / 'eval.jsonl'}: {len(shared)} eval question(s) also in {path} ({pairs}); "
                            "eval must be held out: re-run `dvc repro prepare`")


def _write_csv(path: Path, header: list[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


if __name__ == "__main__":
    run_stage("eval", main, resolved)
