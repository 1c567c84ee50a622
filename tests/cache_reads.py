"""What a scripted model has read through each KV cache it is handed, for test doubles of a causal LM.

decoding.prime / decode_batch drive a model through a transformers cache: a one-row prefix repeated over
the rows, group prefixes selected per row, rows dropped when they end. A scripted model computes its
logits from the whole context, so it must know what each row has read so far: CacheReads keeps that in
step with the cache's batch operations, as a real cache's layers would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class _Reads:
    cache: Any  # held, so its id is not reused while it is a key
    ids: Any
    masked: bool = False


class CacheReads:
    """The ids read through each cache so far, per row."""

    def __init__(self) -> None:
        self.reads: dict[int, _Reads] = {}

    def extend(self, cache: Any, input_ids: Any, *, masked: bool) -> tuple[Any, bool]:
        """Every id each row has read, this forward's included, and whether this is the cache's first masked
        forward (where decode_batch reads the rows' own ids when it forms no groups: a batch starts)."""
        import torch

        if cache is None:
            return input_ids, masked
        reads = self.reads.get(id(cache))
        if reads is None:
            reads = self.reads[id(cache)] = _Reads(cache, input_ids[:, :0])
            self._follow(reads)
        reads.ids = torch.cat([reads.ids, input_ids], 1)
        starts = masked and not reads.masked
        reads.masked |= masked
        return reads.ids, starts

    @staticmethod
    def _follow(reads: _Reads) -> None:
        def repeat(repeats: int) -> None:
            reads.ids = reads.ids.repeat_interleave(repeats, dim=0)

        def select(indices: Any) -> None:
            reads.ids = reads.ids[indices]

        reads.cache.batch_repeat_interleave = repeat
        reads.cache.batch_select_indices = select
