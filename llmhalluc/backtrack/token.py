"""The backtrack token in a model's vocabulary: adding it with its embedding rows initialised, and finding it.

Adding ``<|backtrack|>`` is done here, in one place, because the new token's input *and* output rows
must both be initialised sensibly: a random output row makes the model emit (or never emit) the
token for reasons unrelated to training. How the rows start is an init strategy (sft.backtrack.init),
registered by name below.

torch is imported inside the functions that need it: the stage scripts import DEFAULT_TOKEN at the
top, and checking params must not wait for torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from llmhalluc.errors import ParamsError
from llmhalluc.params.sections import DEFAULT_TOKEN as DEFAULT_TOKEN  # sft.backtrack.token's default, declared there

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

InitStrategy = Callable[["torch.Tensor", "PreTrainedTokenizerBase"], "torch.Tensor"]
INIT_STRATEGIES: dict[str, InitStrategy] = {}

SEMANTIC_WORDS = (" undo", " delete", " erase", " back", " remove")
DESCRIPTION = "delete the previous token"


def init_strategy(name: str) -> Callable[[InitStrategy], InitStrategy]:
    """Register a strategy under ``name`` so params can choose it by string."""

    def register(fn: InitStrategy) -> InitStrategy:
        if name in INIT_STRATEGIES:
            raise ValueError(f"init strategy {name!r} is registered twice")
        INIT_STRATEGIES[name] = fn
        return fn

    return register


def _mean_of_text(embedding_matrix: torch.Tensor, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]):
    """Mean embedding of the ordinary (non-special, in-range) token ids that encode ``texts``."""
    special = set(tokenizer.all_special_ids)
    ids = [
        i
        for text in texts
        for i in tokenizer.encode(text, add_special_tokens=False)
        if i not in special and 0 <= i < embedding_matrix.shape[0]
    ]
    if not ids:
        raise ValueError(f"none of {list(texts)!r} encodes to an ordinary token of this tokenizer")
    return embedding_matrix[ids].float().mean(dim=0)


@init_strategy("mean")
def mean_init(embedding_matrix: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The mean row: a token the model has no opinion about yet (Hewitt's advice for new tokens)."""
    return embedding_matrix.float().mean(dim=0)


@init_strategy("semantic")
def semantic_init(embedding_matrix: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Mean of words meaning "undo", so the token starts near what it means."""
    return _mean_of_text(embedding_matrix, tokenizer, SEMANTIC_WORDS)


@init_strategy("description")
def description_init(embedding_matrix: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Mean of a sentence describing what the token does."""
    return _mean_of_text(embedding_matrix, tokenizer, [DESCRIPTION])


@init_strategy("combined")
def combined_init(embedding_matrix: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Mean of mean, semantic and description: near the meaning but pulled toward the centre."""
    import torch

    parts = [mean_init, semantic_init, description_init]
    return torch.stack([fn(embedding_matrix, tokenizer) for fn in parts]).mean(dim=0)


def add_backtrack_token(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    token: str = DEFAULT_TOKEN,
    strategy: str = "mean",
    noise_std: float = 0.01,
    seed: int = 0,
    *,
    special: bool = True,
) -> int:
    """Add ``token`` as a special token and initialise its input and output rows; return its id.

    Idempotent: if the tokenizer already has the token (a checkpoint that was trained with
    it), nothing changes, so trained rows are never overwritten.

    The row is ``strategy(old rows) + noise``; the noise vector has an expected norm of
    ``noise_std`` times the mean row norm (per-element std ``noise_std * mean_norm / sqrt(dim)``),
    so noise_std is relative to the matrix's own scale. Input and output matrices each get
    their own strategy vector. The embeddings are only resized when the new id does not fit:
    hub models often have padded matrices (Qwen2.5: 151936 rows for ~151665 tokens), and
    shrinking them to len(tokenizer) would be a needless change of shape.

    ``special=False`` adds it as an ordinary added token (still never split): use it when the
    token must survive ``decode(skip_special_tokens=True)``, which TRL's GRPOTrainer applies to
    the completions it hands to reward functions.
    """
    import torch

    if strategy not in INIT_STRATEGIES:
        raise ParamsError(f"unknown init strategy {strategy!r}; valid: {', '.join(sorted(INIT_STRATEGIES))}")
    if token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(token)

    old_len = len(tokenizer)
    if special:
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    else:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
    new_id = tokenizer.convert_tokens_to_ids(token)
    if new_id >= model.get_input_embeddings().weight.shape[0]:
        # mean_resizing=False: we overwrite the row anyway, and the covariance it samples from is slow.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    generator = torch.Generator().manual_seed(seed)
    init_fn = INIT_STRATEGIES[strategy]
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:  # tied: one row to set, not two
        weights.append(output.weight)
    with torch.no_grad():
        for weight in weights:
            old_rows = weight[:old_len]
            vector = init_fn(old_rows, tokenizer)
            mean_norm = old_rows.float().norm(dim=1).mean()
            scale = noise_std * mean_norm / math.sqrt(weight.shape[1])
            noise = torch.randn(weight.shape[1], generator=generator) * scale
            weight[new_id] = (vector + noise).to(device=weight.device, dtype=weight.dtype)
    return new_id


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of token in the tokenizer's vocabulary, None when it has no such token (unknown is no answer)."""
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
        return None
    return found
