"""The built-in tiny model (``builtin:tiny-qwen2``): a byte-level BPE trained on the task's text, a seeded Qwen2.

It exists so that every stage can be run end to end on a CPU in seconds, offline, with the
same code paths as a hub model (Auto classes, safetensors, chat template): it is saved as an
ordinary HF folder, and every later stage loads that folder like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from llmhalluc.errors import ParamsError
from llmhalluc.params.sections import BUILTIN_PREFIX, TinyModelParams

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML, as Qwen uses it, without Qwen's default system prompt. The assistant content and
# its <|im_end|> sit inside {% generation %} markers: TRL's SFT assistant_only_loss needs
# them (it can only patch templates it knows), and <|im_end|> must be inside so the model
# learns to stop. The "\n" after <|im_end|> is outside: the model never emits it.
# Content may be a string, None (tool-call turns) or a list of {"type": "text"} parts.
CHAT_TEMPLATE = r"""
{%- for message in messages %}
    {%- if message['content'] is string %}
        {%- set content = message['content'] %}
    {%- elif message['content'] is none or message['content'] is not defined %}
        {%- set content = '' %}
    {%- else %}
        {%- set content = message['content'] | selectattr('type', 'equalto', 'text')
            | map(attribute='text') | join('') %}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {{- content + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip()


def is_builtin(name: str) -> bool:
    """True for names like ``builtin:tiny-qwen2`` that are built locally, not loaded from a hub or a path."""
    return name.startswith(BUILTIN_PREFIX)


def _train_tokenizer(corpus: Sequence[str], vocab_size: int, special_tokens: Sequence[str]):
    """Train a byte-level BPE so that any text is encodable without <unk>.

    Qwen2's split puts every digit in its own token, which keeps arithmetic regular.
    The pipeline (NFC, split regex, byte level) is exactly Qwen2Tokenizer's: transformers 5's
    AutoTokenizer picks the class from config.json's model_type and rebuilds the pipeline from
    vocab and merges alone, so any other pipeline would tokenise differently once reloaded.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return tokenizer


def build_tiny_model(
    save_dir: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = TinyModelParams.vocab_size,
    hidden_size: int = TinyModelParams.hidden_size,
    num_layers: int = TinyModelParams.num_layers,
    num_heads: int = TinyModelParams.num_heads,
    intermediate_size: int = TinyModelParams.intermediate_size,
    max_position_embeddings: int = 512,
    seed: int = TinyModelParams.seed,
    extra_special_tokens: Sequence[str] = (),
) -> Path:
    """Train a tokenizer on ``corpus``, build a random Qwen2 model, and save both like a hub checkpoint.

    Deterministic: the same corpus and arguments give byte-identical files, so a DVC stage
    that builds the tiny model is cached correctly. vocab_size is an upper bound: BPE stops
    early when the corpus has no more pairs to merge, and the model uses the real size.
    """
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = [ENDOFTEXT, IM_START, IM_END]
    specials += [t for t in extra_special_tokens if t not in specials]
    min_vocab = 256 + len(specials)
    if vocab_size < min_vocab:
        raise ParamsError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {min_vocab}")
    if hidden_size % num_heads:
        raise ParamsError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    texts = list(corpus)
    if not texts:
        raise ParamsError("build_tiny_model needs a non-empty corpus to train its tokenizer")

    backend = _train_tokenizer(texts, vocab_size, specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=specials[3:],
        model_max_length=max_position_embeddings,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        max_window_layers=num_layers,
        tie_word_embeddings=False,  # the backtrack token's output row must be its own parameter
        bos_token_id=endoftext_id,
        eos_token_id=im_end_id,
        pad_token_id=endoftext_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without changing the caller's RNG state
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext_id, eos_token_id=im_end_id, pad_token_id=endoftext_id
    )

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_dir, safe_serialization=True)
    tokenizer.save_pretrained(save_dir)
    return save_dir
