"""Evaluation: batched generation and per-example scoring.

Generation is batched with left padding (one `generate` call per batch), which
is what makes eval cheap enough to run on every experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmhalluc.answers import extract_answer, normalize_answer
from llmhalluc.backtrack import count_backtracks, resolve_ids


def generate_batched(model: Any, tokenizer: Any, prompts: Sequence[list[dict]], *, batch_size: int,
                     max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> list[list[int]]:
    """Completion ids (prompt and padding stripped, up to the end-of-turn token) for each prompt."""
    import torch

    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                 for m in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **sampling)
        for row in generated[:, batch["input_ids"].shape[1]:].tolist():
            ids = row[: row.index(eos)] if eos in row else row
            out.append([t for t in ids if t != tokenizer.pad_token_id])
    return out


def score(completion_ids: list[int], gold: str, tokenizer: Any, backtrack_id: int) -> dict[str, Any]:
    """One prediction row: raw and resolved text, extracted answers, correctness, backtracks."""
    raw = tokenizer.decode(completion_ids, skip_special_tokens=False)
    resolved_text = tokenizer.decode(resolve_ids(completion_ids, backtrack_id), skip_special_tokens=True)
    unresolved_text = tokenizer.decode([t for t in completion_ids if t != backtrack_id], skip_special_tokens=True)
    answer = normalize_answer(extract_answer(resolved_text))
    return {
        "raw": raw,
        "resolved": resolved_text,
        "answer": answer,
        "gold": normalize_answer(gold),
        "correct": answer is not None and answer == normalize_answer(gold),
        "correct_unresolved": normalize_answer(extract_answer(unresolved_text)) == normalize_answer(gold),
        "backtracks": count_backtracks(completion_ids, backtrack_id),
        "length": len(completion_ids),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {
        "accuracy": round(sum(r["correct"] for r in rows) / n, 6),
        "accuracy_unresolved": round(sum(r["correct_unresolved"] for r in rows) / n, 6),
        "backtrack_rate": round(sum(r["backtracks"] > 0 for r in rows) / n, 6),
        "mean_backtracks": round(sum(r["backtracks"] for r in rows) / n, 6),
        "mean_length": round(sum(r["length"] for r in rows) / n, 6),
        "examples": len(rows),
    }
