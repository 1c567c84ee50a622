"""Batched decoding on a transformers model: what `generate` computes for eval's batches, cheaper.

Eval's greedy completions, its samples, the probe's continuations and the rollback decoder's rounds all come
from `decode_batch`; the diagnostics' teacher forcing reads through the same `prime`. Not `generate`, because
in those batches rows share long prefixes and generate reads every row whole: all rows share the system
prompt and chat template, the probe's four continuations of a wrong step share its problem and the steps
before it, a problem's samples share its prompt. Here a batch is read in three levels: the prefix of every
row once (`shared`), then the further prefix of each group of rows once per group (the caller names the
groups: it knows which rows continue one context), then each row's own tokens, the KV cache copied from one
level to the next. The cache grows in place, where generate's DynamicCache copies it whole at every step
(most of a small model's decoding step). Rows that have ended leave the model's batch (`DROP_AT`), where
generate computes them to the end of the longest.

The contract is generate's, so a completion does not depend on the path: the logits processors and stopping
criteria see the batch as generate lays it out (left-padded rows, then the new tokens) and the float32 scores
before the choice; greedy takes the argmax, sampling draws `torch.multinomial` from the softmax on the global
torch generator, every row at every step as generate draws; a row ends at a stop id or when a stopping
criterion says so and is padded after; the batch ends when every row has, or at max_new_tokens.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: A group's prefix shorter than this is read with each row: another forward pass costs more than it saves.
MIN_GROUP_PREFIX = 16
#: Rows that have ended are dropped from the model's batch once at most this share of it still runs: each
#: drop copies the cache, so it waits until a quarter of the rows can go.
DROP_AT = 0.75


@dataclass(frozen=True)
class PrefixPlan:
    """How a batch is read: `shared` ids every row starts with, then for each row the group it belongs to
    (-1: none) and for each group the ids after `shared` its rows share. Every row keeps at least one id
    of its own: the forward pass over the rows' own ids gives each its first next-token scores."""

    shared: int
    group_of: tuple[int, ...]
    group_lengths: tuple[int, ...]

    def read_once(self, row: int) -> int:
        """How many of the row's ids are read before its own (shared, then its group's)."""
        group = self.group_of[row]
        return self.shared + (self.group_lengths[group] if group >= 0 else 0)


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading ids every sequence of a batch shares, leaving each at least one of its own; 0 for a
    single sequence."""
    if len(sequences) < 2:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


def prefix_plan(sequences: Sequence[Sequence[int]], group_prefix: Sequence[int] | None = None) -> PrefixPlan:
    """How a batch is read. Every row's shared prefix, then, where the caller says which rows share more
    (group_prefix[r]: how many of row r's ids its group shares; rows whose first ids that far are equal form
    a group), each group's prefix once. Groups sharing under MIN_GROUP_PREFIX ids after the shared ones are
    not formed, nor any when reading the groups (group rows x the longest group prefix, plus rows x the
    longest rest: padding is read too) would cost more than reading the rows whole."""
    shared = shared_prefix(sequences)
    n = len(sequences)
    whole = n * max((len(s) - shared for s in sequences), default=0)
    ungrouped = PrefixPlan(shared=shared, group_of=(-1,) * n, group_lengths=())
    if group_prefix is None:
        return ungrouped
    members: dict[tuple[int, ...], list[int]] = {}
    for row, (ids, length) in enumerate(zip(sequences, group_prefix, strict=True)):
        members.setdefault(tuple(ids[shared:length]), []).append(row)
    group_of, lengths = [-1] * n, []
    for key, rows in members.items():
        # Every row keeps an id of its own (a row that is the whole prefix reads its last id itself).
        length = min(len(key), *(len(sequences[r]) - shared - 1 for r in rows))
        if len(rows) > 1 and length >= MIN_GROUP_PREFIX:
            for row in rows:
                group_of[row] = len(lengths)
            lengths.append(length)
    if not lengths:
        return ungrouped
    own = max(len(s) - shared - (lengths[g] if g >= 0 else 0) for s, g in zip(sequences, group_of, strict=True))
    if (len(lengths) + (-1 in group_of)) * max(lengths) + n * own >= whole:
        return ungrouped
    return PrefixPlan(shared=shared, group_of=tuple(group_of), group_lengths=tuple(lengths))


@dataclass
class Primed:
    """A batch whose prefixes are read into a KV cache (`prime`): what the forward pass over each row's own
    ids needs. own: the rows' own ids, left-padded; mask and positions cover everything read so far and the
    own ids (positions count real tokens only, as generate counts them); cache: the forward keywords."""

    own: Any
    mask: Any
    positions: Any
    kv: Any
    cache: dict[str, Any]

    def forward(self, model: Any, **kwargs: Any) -> Any:
        """The forward pass over the own ids (extra keywords: logits_to_keep, output_hidden_states, ...)."""
        width = self.own.shape[1]
        return model(input_ids=self.own, attention_mask=self.mask, position_ids=self.positions[:, -width:],
                     **self.cache, **kwargs)


def prime(model: Any, sequences: Sequence[Sequence[int]], plan: PrefixPlan, *, pad_id: int,
          room: int = 0) -> Primed:
    """Read a batch's shared prefix (once) and its groups' prefixes (once per group) into a fresh KV cache
    with `room` tokens to grow, laid out per row as shared | group prefix (left-padded) | own ids (left-padded),
    the padding masked."""
    import torch

    device = next(model.parameters()).device
    rows, shared = len(sequences), plan.shared
    groups = len(plan.group_lengths)
    ungrouped = -1 in plan.group_of
    group_width = max(plan.group_lengths, default=0)
    # Each row's row of the group pass: its group's, or a last all-padding one standing for the rows in none.
    select = [g if g >= 0 else groups for g in plan.group_of]
    firsts = [select.index(g) for g in range(groups + (ungrouped and groups > 0))]  # a row of each group row
    group_rows = [list(sequences[row][shared:shared + length]) for row, length in
                  zip(firsts, plan.group_lengths, strict=False)] + ([[]] if len(firsts) > groups else [])
    own, own_mask = left_padded([s[plan.read_once(r):] for r, s in enumerate(sequences)], pad_id)
    mask = own_mask
    if groups:
        group_ids, group_mask = left_padded(group_rows, pad_id, width=group_width)
        mask = torch.cat([group_mask[select], own_mask], dim=1)
    mask = torch.cat([torch.ones((rows, shared), dtype=torch.long), mask], dim=1).to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    kv = kv_cache(model, mask.shape[1] + room)
    cache = {cache_keyword(model): kv, "use_cache": True}
    with torch.inference_mode():
        if shared:
            prefix = torch.tensor([list(sequences[0][:shared])], dtype=torch.long, device=device)
            model(input_ids=prefix, position_ids=positions[:1, :shared], logits_to_keep=1, **cache)
        if groups:
            index = torch.tensor(firsts, device=device)
            if shared:
                kv.batch_repeat_interleave(len(group_rows))
            model(input_ids=group_ids.to(device), attention_mask=mask[index, :shared + group_width],
                  position_ids=positions[index, shared:shared + group_width], logits_to_keep=1, **cache)
            kv.batch_select_indices(torch.tensor(select, device=device))
        elif shared:
            kv.batch_repeat_interleave(rows)
    return Primed(own=own.to(device), mask=mask, positions=positions, kv=kv, cache=cache)


def decode_batch(model: Any, sequences: Sequence[Sequence[int]], *, stops: set[int], pad_id: int,
                 max_new_tokens: int, sample: bool = False, group_prefix: Sequence[int] | None = None,
                 logits_processor: Any = None, stopping_criteria: Any = None) -> Any:
    """One batch's new tokens, a (rows, steps) tensor with pad after a row's end: what
    `generate(do_sample=sample)` returns after the prompt (the module's docstring says how it is cheaper and
    what stays the same). group_prefix says which rows share more than the batch does (`prefix_plan`).
    Sampling draws from the global torch generator: seed it first."""
    import torch

    device = next(model.parameters()).device
    rows = len(sequences)
    primed = prime(model, sequences, prefix_plan(sequences, group_prefix), pad_id=pad_id, room=max_new_tokens)
    kv, mask, positions = primed.kv, primed.mask, primed.positions
    cache = {**primed.cache, "logits_to_keep": 1}
    # What processors and stopping criteria see: the batch as generate lays it out.
    visible, _ = left_padded(sequences, pad_id)
    width = visible.shape[1]
    visible = visible.to(device)
    stop = torch.tensor(sorted(stops), device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    with torch.inference_mode():
        out = primed.forward(model, logits_to_keep=1)
        running = torch.arange(rows, device=device)  # the batch rows the model still computes, in its order
        for step in range(max_new_tokens):
            scores = out.logits[:, -1].to(dtype=torch.float32, copy=True)
            if len(running) < rows:  # rows dropped: zeros stand for them (their choice is padding anyway)
                scores = scores.new_zeros((rows, scores.shape[-1])).index_copy_(0, running, scores)
            if logits_processor is not None:
                scores = logits_processor(visible, scores)
            # Every row draws, finished or not: the generator advances as generate's does.
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0] if sample else scores.argmax(-1)
            tokens = torch.where(unfinished, chosen, pad_id)
            visible = torch.cat([visible, tokens[:, None]], dim=1)
            unfinished &= ~torch.isin(tokens, stop)
            if stopping_criteria is not None:
                unfinished &= ~stopping_criteria(visible, scores)
            if step + 1 == max_new_tokens or not unfinished.any():
                break
            if (live := unfinished[running]).sum() <= DROP_AT * len(running):
                # Enough rows have ended: the model stops computing them (their cache rows go with them).
                keep = live.nonzero()[:, 0]
                kv.batch_select_indices(keep)
                running, mask, positions = running[keep], mask[keep], positions[keep]
            mask = torch.cat([mask, mask.new_ones((len(running), 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=tokens[running, None], attention_mask=mask, position_ids=positions, **cache)
    return visible[:, width:]


def generate_options(*, max_new_tokens: int, stops: set[int], pad_id: int, sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0) -> dict[str, Any]:
    """generate()'s keyword arguments that decode as decode_batch does: the reference it is compared
    with (tests/test_decoding.py, benchmarks/eval_throughput.py). Every decoding knob is set, since
    generate() fills a knob left unset from the checkpoint's generation_config (Qwen2.5-Instruct ships
    repetition_penalty 1.05 and top_k 20) and decode_batch reads none of it."""
    options: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id,
                               "eos_token_id": sorted(stops), "repetition_penalty": 1.0}
    if sample:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    else:  # greedy ignores the sampling knobs; left unset they are not even reported as unused
        options.update(temperature=None, top_p=None, top_k=None)
    return options


def left_padded(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of rows padded on the left to `width` (default: the longest row): every
    row's last real token is in the last column, where generation continues and where teacher forcing reads
    the next-token distribution."""
    import torch

    width = max(len(ids) for ids in sequences) if width is None else width
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, values in enumerate(sequences):
        if values:
            ids[row, width - len(values):] = torch.tensor(list(values), dtype=torch.long)
            mask[row, width - len(values):] = 1
    return ids, mask


def cache_keyword(model: Any) -> str:
    """The forward() keyword of the KV cache: transformers 5 renames past_key_values to cache (a PEFT model
    passes it through to the model it wraps)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def kv_cache(model: Any, capacity: int) -> Any:
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
        cache per layer and step). Same values, same attention: only the storage differs. Supports what
        decode_batch asks: update, repeating a one-row prefix over rows, selecting rows."""

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
            self._views()
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.key_buffer is not None:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices: Any) -> None:
            if self.key_buffer is not None:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self._views()

        def _views(self) -> None:
            self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    return GrowingLayer
