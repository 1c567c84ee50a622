"""The tiny builtin model and its chat template, the backtrack token's rows, loading and the end of turn.

Everything runs on CPU, offline, on a model built from a small synthetic corpus.
"""

from __future__ import annotations

import os
import random
import unicodedata
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

from llmhalluc.backtrack.token import DEFAULT_TOKEN as BACKTRACK_TOKEN
from llmhalluc.backtrack.token import INIT_STRATEGIES, add_backtrack_token
from llmhalluc.errors import ParamsError
from llmhalluc.models import end_of_turn_token, load_model_and_tokenizer, resolve_dtype, use_end_of_turn
from llmhalluc.params.sections import BUILTIN_TINY
from llmhalluc.tiny_model import CHAT_TEMPLATE, build_tiny_model, is_builtin

NOISE_STD = 0.01


def arithmetic_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Sentences like "3 + 4 = 7. The answer is 7.", plus a few words the semantic strategy looks up."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        op = rng.choice(["+", "-", "*"])
        c = {"+": a + b, "-": a - b, "*": a * b}[op]
        lines.append(f"{a} {op} {b} = {c}. The answer is {c}.")
    lines += ["Oops, undo that: delete, erase, go back and remove the previous token."] * 5
    return lines


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), arithmetic_corpus())


@pytest.fixture
def model_and_tokenizer(tiny_dir: Path):
    return load_model_and_tokenizer(str(tiny_dir), dtype="float32")


def rows(model) -> tuple[torch.Tensor, torch.Tensor]:
    return model.get_input_embeddings().weight.detach().clone(), model.get_output_embeddings().weight.detach().clone()


# --------------------------------------------------------------------------- builtin tiny model


def test_is_builtin() -> None:
    assert is_builtin(BUILTIN_TINY)
    assert not is_builtin("Qwen/Qwen2.5-0.5B-Instruct")
    assert not is_builtin("/models/tiny")


def test_build_is_deterministic(tmp_path: Path) -> None:
    corpus = arithmetic_corpus()
    a = build_tiny_model(tmp_path / "a", corpus)
    b = build_tiny_model(tmp_path / "b", iter(corpus))  # any iterable, consumed once
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_tiny_model(tmp_path / "c", corpus, seed=1)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_loads_via_auto_classes(tiny_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert model.config.vocab_size == len(tokenizer) <= 512
    from llmhalluc.params.sections import TinyModelParams

    assert model.get_input_embeddings().weight.shape == (len(tokenizer), TinyModelParams.hidden_size)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    gen = model.generation_config
    assert gen.eos_token_id == tokenizer.eos_token_id
    assert gen.pad_token_id == tokenizer.pad_token_id
    assert gen.bos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (tiny_dir / "model.safetensors").exists() and not list(tiny_dir.glob("*.bin"))

    # AutoTokenizer rebuilds the pipeline from vocab and merges (as Qwen2Tokenizer); it must tokenise
    # exactly as the tokenizer we trained and saved, special tokens and unnormalised text included.
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    for text in ["12 * 3 = 36. The answer is 36.", unicodedata.normalize("NFD", "café"), "a<|im_start|>b\n\n  c"]:
        assert tokenizer.encode(text) == raw.encode(text).ids
        assert tokenizer.decode(tokenizer.encode(text)) == unicodedata.normalize("NFC", text)
    assert tokenizer.tokenize("123") == ["1", "2", "3"]  # digits split, as in Qwen2

    ids = tokenizer("3 + 4 =", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids["input_ids"].shape[1] + 3) or tokenizer.eos_token_id in out[0].tolist()


def test_extra_special_tokens_are_single_tokens(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path, arithmetic_corpus(20), extra_special_tokens=[BACKTRACK_TOKEN])
    _, tokenizer = load_model_and_tokenizer(str(path), dtype="float32")
    ids = tokenizer.encode(f"7{BACKTRACK_TOKEN}8")
    assert ids[1] == tokenizer.convert_tokens_to_ids(BACKTRACK_TOKEN) and len(ids) == 3


def test_bad_build_params_raise(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="vocab_size"):
        build_tiny_model(tmp_path, ["1 + 1 = 2"], vocab_size=100)
    with pytest.raises(ParamsError, match="divisible"):
        build_tiny_model(tmp_path, ["1 + 1 = 2"], hidden_size=130)
    with pytest.raises(ParamsError, match="corpus"):
        build_tiny_model(tmp_path, [])


# --------------------------------------------------------------------------- chat template


def test_chat_template_renders(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "3 + 4 = ?"},
        {"role": "assistant", "content": "7"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\n3 + 4 = ?<|im_end|>\n"
        "<|im_start|>assistant\n7<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == text[: text.index("7<|im_end|>")]
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages[:2], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer.encode(prompt)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    # Structured content (a list of text parts) renders like a string.
    parts = [{"role": "user", "content": [{"type": "text", "text": "3 + 4 = ?"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<|im_start|>user\n3 + 4 = ?<|im_end|>\n"


def test_assistant_mask_covers_content_and_stop_token(model_and_tokenizer) -> None:
    """What TRL's SFT assistant_only_loss relies on: {% generation %} spans the answer and <|im_end|>."""
    _, tokenizer = model_and_tokenizer
    messages = [{"role": "user", "content": "3 + 4 = ?"}, {"role": "assistant", "content": "7"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "7<|im_end|>"


def test_chat_template_is_trl_training_compatible(model_and_tokenizer) -> None:
    chat_template_utils = pytest.importorskip("trl.chat_template_utils")
    _, tokenizer = model_and_tokenizer
    assert chat_template_utils.has_generation_markers(tokenizer.chat_template)
    assert chat_template_utils.is_chat_template_stop_token_trained(tokenizer)
    assert chat_template_utils.is_chat_template_prefix_preserving(tokenizer)


# --------------------------------------------------------------------------- backtrack token


def test_add_backtrack_token_adds_one_token(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    old_len = len(tokenizer)
    old_in, old_out = rows(model)
    new_id = add_backtrack_token(model, tokenizer, noise_std=NOISE_STD)
    assert new_id == old_len
    assert len(tokenizer) == old_len + 1
    assert tokenizer.convert_tokens_to_ids(BACKTRACK_TOKEN) == new_id
    assert tokenizer.encode(f"7{BACKTRACK_TOKEN}8")[1] == new_id
    assert BACKTRACK_TOKEN in tokenizer.all_special_tokens
    assert model.config.vocab_size == old_len + 1
    new_in, new_out = rows(model)
    assert new_in.shape == new_out.shape == (old_len + 1, old_in.shape[1])
    assert torch.equal(new_in[:old_len], old_in) and torch.equal(new_out[:old_len], old_out)

    for new, old in ((new_in, old_in), (new_out, old_out)):
        offset = (new[new_id] - old.mean(dim=0)).norm()
        expected = NOISE_STD * old.norm(dim=1).mean()  # expected norm of the noise
        assert 0 < offset < 3 * expected
    assert not torch.equal(new_in[new_id], new_out[new_id])  # each matrix gets its own row


@pytest.mark.parametrize("strategy", sorted(INIT_STRATEGIES))
def test_strategies_without_noise(model_and_tokenizer, strategy: str) -> None:
    model, tokenizer = model_and_tokenizer
    old_len = len(tokenizer)
    old_in, old_out = rows(model)
    new_id = add_backtrack_token(model, tokenizer, strategy=strategy, noise_std=0.0)
    new_in, new_out = rows(model)
    fn = INIT_STRATEGIES[strategy]
    for new, old in ((new_in, old_in), (new_out, old_out)):
        vector = fn(old, tokenizer)
        assert vector.shape == (old.shape[1],)
        assert torch.allclose(new[new_id], vector)
        assert torch.isfinite(vector).all()
    assert new_id == old_len


def formula(strategy: str, old: torch.Tensor, tokenizer) -> torch.Tensor:
    """Each strategy written out independently of llmhalluc.models."""
    def mean_of(texts):
        ids = [i for t in texts for i in tokenizer.encode(t, add_special_tokens=False)]
        return old[ids].mean(dim=0)

    vectors = {
        "mean": old.mean(dim=0),
        "semantic": mean_of([" undo", " delete", " erase", " back", " remove"]),
        "description": mean_of(["delete the previous token"]),
    }
    vectors["combined"] = (vectors["mean"] + vectors["semantic"] + vectors["description"]) / 3
    return vectors[strategy]


@pytest.mark.parametrize("strategy", sorted(INIT_STRATEGIES))
def test_rows_equal_the_formula_with_noise(model_and_tokenizer, strategy: str) -> None:
    """row = strategy(old rows) + N(0, 1) * noise_std * mean row norm / sqrt(dim), input then output matrix,
    the noise drawn from a generator seeded with `seed` (so the init is reproducible, and each matrix differs)."""
    model, tokenizer = model_and_tokenizer
    old_in, old_out = rows(model)
    new_id = add_backtrack_token(model, tokenizer, strategy=strategy, noise_std=0.05, seed=11)
    new_in, new_out = rows(model)
    generator = torch.Generator().manual_seed(11)
    for new, old in ((new_in, old_in), (new_out, old_out)):
        dim = old.shape[1]
        noise = torch.randn(dim, generator=generator) * 0.05 * old.norm(dim=1).mean() / dim**0.5
        expected = formula(strategy, old, tokenizer) + noise
        assert torch.allclose(new[new_id], expected, atol=1e-6)
    # The strategies really differ (the formula is not the same vector under four names).
    others = {name: INIT_STRATEGIES[name](old_in, tokenizer) for name in INIT_STRATEGIES if name != strategy}
    assert all(not torch.allclose(new_in[new_id], vector, atol=1e-4) for vector in others.values())


def test_combined_is_mean_of_the_other_three(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    matrix = model.get_input_embeddings().weight.detach()
    parts = [INIT_STRATEGIES[name](matrix, tokenizer) for name in ("mean", "semantic", "description")]
    assert torch.allclose(INIT_STRATEGIES["combined"](matrix, tokenizer), torch.stack(parts).mean(dim=0))
    assert not torch.allclose(parts[0], parts[1])


def test_add_is_deterministic(tiny_dir: Path) -> None:
    results = []
    for _ in range(2):
        model, tokenizer = load_model_and_tokenizer(str(tiny_dir), dtype="float32")
        new_id = add_backtrack_token(model, tokenizer, seed=3)
        results.append([r[new_id] for r in rows(model)])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_padded_matrix_is_not_resized(model_and_tokenizer) -> None:
    """Hub models often have more rows than tokens (Qwen2.5: 151936 for ~151665); keep that shape."""
    model, tokenizer = model_and_tokenizer
    old_len = len(tokenizer)
    model.resize_token_embeddings(old_len + 8, mean_resizing=False)
    embedding = model.get_input_embeddings()
    new_id = add_backtrack_token(model, tokenizer, noise_std=0.0)
    assert new_id == old_len
    assert model.get_input_embeddings() is embedding and embedding.weight.shape[0] == old_len + 8
    expected = embedding.weight[:old_len].detach().mean(dim=0)
    assert torch.allclose(embedding.weight[new_id].detach(), expected)


def test_tied_embeddings_get_one_row(tiny_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    _, tokenizer = load_model_and_tokenizer(str(tiny_dir), dtype="float32")
    old = model.get_input_embeddings().weight.detach().clone()
    new_id = add_backtrack_token(model, tokenizer, noise_std=0.0)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.allclose(model.get_output_embeddings().weight[new_id].detach(), old.mean(dim=0))


def test_reuse_when_already_present(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    first = add_backtrack_token(model, tokenizer)
    size, before = len(tokenizer), rows(model)
    embedding = model.get_input_embeddings()
    again = add_backtrack_token(model, tokenizer, strategy="semantic", seed=7)
    assert again == first
    assert len(tokenizer) == size
    assert model.get_input_embeddings() is embedding  # not resized
    assert all(torch.equal(a, b) for a, b in zip(before, rows(model), strict=True))


def test_unknown_strategy_raises(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    size = len(tokenizer)
    with pytest.raises(ParamsError, match="unknown init strategy 'magic'") as info:
        add_backtrack_token(model, tokenizer, strategy="magic")
    for name in INIT_STRATEGIES:
        assert name in str(info.value)
    assert len(tokenizer) == size  # nothing was added before the check


def test_round_trip_keeps_token_and_rows(model_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = model_and_tokenizer
    new_id = add_backtrack_token(model, tokenizer, strategy="combined")
    saved_in, saved_out = rows(model)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path), dtype="float32")
    assert loaded_tok.convert_tokens_to_ids(BACKTRACK_TOKEN) == new_id
    assert loaded_tok.encode(f"7{BACKTRACK_TOKEN}8") == tokenizer.encode(f"7{BACKTRACK_TOKEN}8")
    assert BACKTRACK_TOKEN in loaded_tok.all_special_tokens
    loaded_in, loaded_out = rows(loaded)
    assert torch.equal(loaded_in, saved_in) and torch.equal(loaded_out, saved_out)
    # Loading a checkpoint that has the token must not re-initialise it.
    assert add_backtrack_token(loaded, loaded_tok) == new_id
    assert torch.equal(rows(loaded)[1], saved_out)


def test_non_special_token_survives_skip_special_tokens(model_and_tokenizer, tmp_path: Path) -> None:
    """GRPOTrainer decodes completions with skip_special_tokens=True before calling reward functions."""
    from transformers import AutoTokenizer

    model, tokenizer = model_and_tokenizer
    add_backtrack_token(model, tokenizer, special=False)
    ids = tokenizer.encode(f"7{BACKTRACK_TOKEN}8")
    assert len(ids) == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"7{BACKTRACK_TOKEN}8"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.decode(reloaded.encode(f"7{BACKTRACK_TOKEN}8"), skip_special_tokens=True) == f"7{BACKTRACK_TOKEN}8"


def test_special_token_is_skipped_by_skip_special_tokens(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    add_backtrack_token(model, tokenizer)
    assert tokenizer.decode(tokenizer.encode(f"7{BACKTRACK_TOKEN}8"), skip_special_tokens=True) == "78"


# --------------------------------------------------------------------------- loading


def test_load_rejects_builtin_name_and_bad_dtype(tiny_dir: Path) -> None:
    with pytest.raises(ParamsError, match="build_tiny_model"):
        load_model_and_tokenizer(BUILTIN_TINY)
    with pytest.raises(ParamsError, match="dtype"):
        load_model_and_tokenizer(str(tiny_dir), dtype="float64")


def test_load_dtype(tiny_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(str(tiny_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    model, _ = load_model_and_tokenizer(str(tiny_dir), dtype="float32", attn_implementation="eager")
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "eager"
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32


def test_add_in_bfloat16(tiny_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(str(tiny_dir), dtype="bfloat16")
    new_id = add_backtrack_token(model, tokenizer)
    new_in, new_out = rows(model)
    assert new_in.dtype == torch.bfloat16
    assert torch.isfinite(new_in[new_id].float()).all() and torch.isfinite(new_out[new_id].float()).all()


# --------------------------------------------------------------------------- end of turn


def test_end_of_turn_comes_from_the_chat_template_not_eos(model_and_tokenizer) -> None:
    """A tokenizer whose eos is <|endoftext|> (SmolLM2's GGUF) still ends assistant turns with <|im_end|>:
    SFT targets must end with that, and generation must stop there."""
    model, tokenizer = model_and_tokenizer
    tokenizer.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    assert use_end_of_turn(model, tokenizer) == "<|im_end|>"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end
    assert model.generation_config.eos_token_id == [im_end, tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def test_without_a_chat_template_eos_ends_the_turn(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    tokenizer.chat_template = None
    assert end_of_turn_token(tokenizer) == tokenizer.eos_token
