"""eval: params.yaml[eval] + the compared models + data/prepared/eval.jsonl
-> eval/predictions/<model>.jsonl, eval/predictions.csv, eval/{probe,samples,rollback}/<model>.jsonl,
   metrics/eval.json, plots/eval/.

Every model in eval.models (by default the SFT model and the merged GRPO model)
answers the same held-out questions with the same decoding, and the metrics are
written one block per model, so `dvc metrics show` puts sft.accuracy beside
grpo.accuracy. Each block nests the diagnostics eval.probe / own_errors / sampled
switch on (sft.probe.plausible.detection_auroc, ...) and the rollback decoder's
results beside greedy's (sft.rollback.accuracy); "transitions" compares consecutive
models. Only prepare's held-out eval split is read: eval never runs on training
data. Metric definitions: llmhalluc/evaluation.py, llmhalluc/diagnostics and llmhalluc/rollback.py.

main reads the held-out records, then evaluates each model in turn, saying what it runs (greedy, the
probe per kind, sampled, rollback, with their sizes); a model whose files, eval params, data and code
are those of an earlier eval is not evaluated again: its block comes from llmhalluc.eval_cache, and
the outs are byte for byte what a fresh eval writes. Then it writes the outs, the plots and the
metrics, and prints the key results of every model as a table (llmhalluc.results).
"""

from __future__ import annotations

import csv
import gc
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from llmhalluc.answers import AnswerRules
from llmhalluc.content_hash import file_sha256
from llmhalluc.datasets.records import read_answer_rules, read_jsonl
from llmhalluc.datasets.splits import normalize_question
from llmhalluc.errors import DataError
from llmhalluc.launcher import say
from llmhalluc.lineage import read_lineage, warn_if_cut
from llmhalluc.outputs import staged_output, write_atomically
from llmhalluc.params import Section, resolved, write_resolved
from llmhalluc.results import model_table
from llmhalluc.stage import duration, run_stage

if TYPE_CHECKING:
    from llmhalluc.diagnostics import Diagnosis
    from llmhalluc.params.sections import EvalParams

#: Columns of the one-row-per-answer CSV, in the order a reader wants them.
CSV_COLUMNS = ["model", "id", "answerable", "gold", "answer", "outcome", "correct", "hallucinated", "backtracks",
               "corrected", "answer_unresolved", "length", "resolved", "raw"]
PLOTTED = ["accuracy", "accuracy_unresolved", "hallucination_rate", "abstention_rate", "backtrack_rate",
           "mean_backtracks"]
#: diagnostics.csv column -> (block, metric) in a model's metrics; one row per model, for `dvc plots`. A "probe"
#: block is the first kind eval.probe.kinds names for that model (the probe_kind column says which).
DIAGNOSTICS_PLOTTED = {
    "detection_auroc": ("probe", "detection_auroc"), "detection_hidden_auroc": ("probe", "detection_hidden_auroc"),
    "detection_surprise_auroc": ("probe", "detection_surprise_auroc"),
    "detection_p_wrong": ("probe", "detection_p_wrong"),
    "detection_p_right": ("probe", "detection_p_right"), "counting_exact": ("probe", "counting_exact"),
    "repair_step": ("probe", "repair_step"), "repair_step_resolved": ("probe", "repair_step_resolved"),
    "repair_answer": ("probe", "repair_answer"),
    "correction_backtracked": ("probe", "correction_backtracked"), "correction_right": ("probe", "correction_right"),
    "false_positive": ("probe", "false_positive"),
    "correction_rollback_right": ("probe", "correction_rollback_right"),
    "false_positive_rollback": ("probe", "false_positive_rollback"), "own_auroc": ("own_errors", "auroc"),
    "own_retracted_wrong": ("own_errors", "retracted_wrong"), "sampled_accuracy": ("sampled", "accuracy"),
    "rollback_accuracy": ("rollback", "accuracy"),
}
#: params.yaml[eval] keys that say where models and outs are, not what a model's results are: left out of
#: the cache key (a model's block does not depend on its name, its neighbours, or where the outs go).
NOT_RESULTS = ("models", "include_base", "base_from", "data_dir", "out_dir", "metrics_file", "plots_dir",
               "transitions")


class Evaluated(NamedTuple):
    """One model's results: scored greedy predictions, diagnostics, and its block of metrics/eval.json.
    (A NamedTuple, not a dataclass: tests load this script as a module that is not in sys.modules.)"""

    rows: list[dict[str, Any]]
    diagnosis: Diagnosis
    metrics: dict[str, Any]


def main(section: Section) -> None:
    """The held-out records; each compared model evaluated in turn (its progress printed); the outs, plots
    and metrics written; the key results of every model printed as a table."""
    from llmhalluc import diagnostics

    p = section.project
    records, answers = _held_out(p)
    compared = _compared(p)
    results = {}
    for index, (name, path) in enumerate(compared.items(), 1):
        say(f"eval: {name} ({path}), model {index} of {len(compared)}")
        results[name] = _evaluated(p, name, path, records, answers, section)
    metrics = {name: result.metrics for name, result in results.items()}
    if p.transitions and len(compared) > 1:
        metrics["transitions"] = diagnostics.transitions_between({n: r.rows for n, r in results.items()})

    _write_outs(p, results, {**resolved(section), "compared": compared, "abstain_answer": answers.abstain,
                             "answer_pattern": answers.pattern})
    _write_plots(p, results)
    write_atomically(p.metrics_file, json.dumps(metrics, indent=2) + "\n")
    say(f"eval: key results on {len(records)} problems (every metric: {p.metrics_file}, `dvc metrics show`; "
        f"experiments side by side: python -m llmhalluc.results)\n{model_table(metrics, '  ')}")


def _held_out(p: EvalParams) -> tuple[list, AnswerRules]:
    """The held-out eval records (never a training question) and prepare's answer rules."""
    data_dir = Path(p.data_dir)
    records = read_jsonl(data_dir / "eval.jsonl")
    if not records:
        raise DataError(f"{data_dir / 'eval.jsonl'}: no eval records; raise prepare.sizes.eval")
    _check_held_out(data_dir, records)
    return records, read_answer_rules(data_dir)  # prepare's pattern and abstain phrase, as GRPO's rewards read them


def _compared(p: EvalParams) -> dict[str, str]:
    """name -> model: eval.models, and the base model as 'base' with eval.include_base."""
    from llmhalluc import evaluation

    compared = dict(p.models)
    if p.include_base:
        compared["base"] = evaluation.base_model(p.base_from)
    return compared


def _evaluated(p: EvalParams, name: str, path: str, records: list, answers: AnswerRules,
               section: Section) -> Evaluated:
    """One model's results: from the eval cache when its inputs are those of an earlier eval, else evaluated
    (and kept there for the next one)."""
    from llmhalluc import eval_cache, evaluation
    from llmhalluc.diagnostics import Diagnosis

    key = _cache_key(p, path, answers, section) if eval_cache.enabled() else None
    started = time.monotonic()
    if (cached := eval_cache.load(key)) is not None:
        say(f"eval: {name}: reused from the eval cache (same model files, eval params, data and code as an "
            f"earlier eval): {eval_cache.folder() / key}.json")
        return Evaluated(cached["rows"], Diagnosis(**cached["diagnosis"]), cached["metrics"])
    rows, diagnosis = _evaluate(p, name, path, records, answers)
    evaluated = Evaluated(rows, diagnosis, {**evaluation.summarize(rows, p.max_new_tokens), **diagnosis.metrics})
    eval_cache.store(key, {"model": path, "rows": rows, "diagnosis": vars(diagnosis), "metrics": evaluated.metrics})
    say(f"eval: {name}: done in {duration(time.monotonic() - started)}")
    return evaluated


def _cache_key(p: EvalParams, path: str, answers: AnswerRules, section: Section) -> str | None:
    """What determines one model's block (llmhalluc.eval_cache): its files, the eval params that change results,
    the eval data and answer rules, the code. None for a model that cannot be pinned down (a hub id)."""
    from llmhalluc import eval_cache

    settings = {k: v for k, v in resolved(section).items() if k not in NOT_RESULTS}
    data = {"eval.jsonl": file_sha256(Path(p.data_dir) / "eval.jsonl"), "abstain": answers.abstain,
            "pattern": answers.pattern}
    return eval_cache.key(eval_cache.model_identity(path), settings=settings, data=data,
                          code=eval_cache.code_sha256(__file__))


def _write_outs(p: EvalParams, results: dict[str, Evaluated], resolved_params: dict) -> None:
    """eval/: predictions per model (JSONL) and all together (CSV), per-example diagnostics, resolved params."""
    with staged_output(p.out_dir) as staging:
        (staging / "predictions").mkdir()
        for name, result in results.items():
            _write_jsonl(staging / "predictions" / f"{name}.jsonl", result.rows)
        with (staging / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({"model": name, **row} for name, result in results.items() for row in result.rows)
        for name, result in results.items():  # per-example diagnostics, to see what a rate is made of
            for folder, rows in (("probe", result.diagnosis.probe_rows), ("samples", result.diagnosis.sample_rows),
                                 ("rollback", result.diagnosis.rollback_rows)):
                if rows:
                    _write_jsonl(staging / folder / f"{name}.jsonl", rows)
        write_resolved(resolved_params, staging)


def _write_plots(p: EvalParams, results: dict[str, Evaluated]) -> None:
    """plots/eval/: the CSVs behind dvc.yaml's eval plots, one row per model (and a histogram each)."""
    from llmhalluc import evaluation

    metrics = {name: result.metrics for name, result in results.items()}
    with staged_output(p.plots_dir) as staging:
        _write_csv(staging / "models.csv", ["model", *PLOTTED], [[name, *(m[k] for k in PLOTTED)]
                                                                 for name, m in metrics.items()])
        _write_csv(staging / "diagnostics.csv", ["model", "probe_kind", *DIAGNOSTICS_PLOTTED],
                   [[name, next(iter(m.get("probe", {})), None),
                     *(_plotted(m, block).get(key) for block, key in DIAGNOSTICS_PLOTTED.values())]
                    for name, m in metrics.items()])
        (staging / "backtracks").mkdir()
        for name, result in results.items():
            _write_csv(staging / "backtracks" / f"{name}.csv", ["backtracks", "completions"],
                       evaluation.backtrack_histogram(result.rows))


def _plotted(metrics: dict, block: str) -> dict:
    """One block of a model's metrics for diagnostics.csv; the probe's is its first kind's."""
    values = metrics.get(block, {})
    return next(iter(values.values()), {}) if block == "probe" else values


def _evaluate(p: EvalParams, name: str, path: str, records: list,
              answers: AnswerRules) -> tuple[list[dict], Diagnosis]:
    """One model: its scored greedy answers, then its diagnostics (while it is loaded: one model in memory)."""
    from llmhalluc import diagnostics, evaluation
    from llmhalluc.backtrack.retraction import retraction_for, unit_of

    def log(message: str) -> None:
        say(f"eval: {name}: {message}")

    model, tokenizer = _load(p, path)
    backtrack_id = _backtrack_id(tokenizer, path)  # before generating: a broken folder fails fast
    recorded = read_lineage(path) if Path(path).is_dir() else None
    warn_if_cut(recorded, p.max_new_tokens, "eval.max_new_tokens", log=log)
    log(f"{'sampled' if p.do_sample else 'greedy'} answers to {len(records)} problems ({p.backend})")
    completions = _generate(p, path, model, tokenizer, [r.prompt for r in records])

    unit = unit_of(recorded)  # resolve as the model was trained to retract (token for a model without lineage)
    retraction = retraction_for(tokenizer, backtrack_id, unit=unit)

    def score(ids: Sequence[int], record: Any) -> dict:
        return evaluation.score(ids, gold=record.answer, answerable=record.answerable, tokenizer=tokenizer,
                                backtrack_id=backtrack_id, pattern=answers.pattern, abstain=answers.abstain,
                                retraction=retraction)

    rows = [{"id": r.id, **score(ids, r)} for r, ids in zip(records, completions, strict=True)]
    diagnosis = diagnostics.Diagnosis({}, [], [])
    if diagnostics.enabled(p):
        model = model or _load(p, path, transformers=True)[0]
        diagnosis = diagnostics.diagnose(model, tokenizer, records, backtrack_id=backtrack_id, p=p, score=score,
                                         unit=unit, trained=diagnostics.trained_kind(recorded), log=log)
    if p.rollback.enabled and backtrack_id >= 0:  # greedy decoding that acts on a backtrack (llmhalluc.rollback)
        model = model or _load(p, path, transformers=True)[0]
        _rollback(p, model, tokenizer, records, completions, rows, diagnosis, retraction, score, log)
    del model
    gc.collect()
    return rows, diagnosis


def _rollback(p: EvalParams, model: Any, tokenizer: Any, records: list, completions: list[list[int]],
              rows: list[dict], diagnosis: Diagnosis, retraction: Any, score: Callable, log: Callable) -> None:
    """The rollback decoder on the same problems, its rows and metrics added to the diagnosis."""
    from llmhalluc import evaluation, rollback

    reusable = p.backend == "transformers" and not p.do_sample  # greedy's completions are its first round
    backtracked = sum(retraction.backtrack_id in ids for ids in completions)
    log(f"rollback decoding of {len(records)} problems" + (f" ({backtracked} backtracked under greedy: only "
                                                            "they decode on)" if reusable else ""))
    decoded = rollback.generate_rollback(model, tokenizer, [evaluation.prompt_ids(tokenizer, r.prompt)
                                                            for r in records],
                                         retraction=retraction, max_new_tokens=p.max_new_tokens,
                                         max_retries=p.rollback.max_retries, batch_size=p.batch_size,
                                         greedy=completions if reusable else None)
    diagnosis.rollback_rows = [{"id": r.id, **score(d.ids, r), "retries": d.retries, "generated": d.generated}
                               for r, d in zip(records, decoded, strict=True)]
    diagnosis.metrics["rollback"] = rollback.summarize(diagnosis.rollback_rows, rows)
def _load(p: EvalParams, path: str, transformers: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer); vLLM loads its own copy of the weights, so there the model is None (the
    diagnostics' teacher-forced passes ask for the transformers model anyway)."""
    from llmhalluc import models

    if p.backend == "vllm" and not transformers:
        from transformers import AutoTokenizer

        return None, AutoTokenizer.from_pretrained(path)
    model, tokenizer = models.load_model_and_tokenizer(path, dtype=p.dtype)
    model.eval()
    return model, tokenizer


def _generate(p: EvalParams, path: str, model: Any, tokenizer: Any, prompts: list[list[dict]]) -> list[list[int]]:
    """One model's completion ids for every prompt, through the backend params chose."""
    from llmhalluc import evaluation
    from llmhalluc.rng import seed_everything

    sampling = evaluation.Sampling(max_new_tokens=p.max_new_tokens, do_sample=p.do_sample,
                                   temperature=p.temperature, top_p=p.top_p, seed=p.seed)
    seed_everything(p.seed)  # per model: each model's samples do not depend on which models ran before it
    ids = [evaluation.prompt_ids(tokenizer, m) for m in prompts]
    if p.backend == "vllm":
        return evaluation.generate_vllm(path, tokenizer, ids, sampling=sampling, dtype=p.dtype)
    return evaluation.generate_transformers(model, tokenizer, ids, batch_size=p.batch_size, sampling=sampling)


def _backtrack_id(tokenizer: Any, path: str) -> int:
    """The id of the model's backtrack token; -1 (matches nothing) for a model that never learned one."""
    from llmhalluc import evaluation

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


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_csv(path: Path, header: list[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


if __name__ == "__main__":
    run_stage("eval", main, resolved)
