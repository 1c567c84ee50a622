"""Every place the pipeline reaches into a private part of TRL, transformers or peft, in one module.

Each entry names the version it was checked against (CHECKED); tests/test_trl_compat.py reads
the installed libraries and fails when one of these internals changes, so an upgrade shows
here, not as a silent wrong curve or an AttributeError mid-training.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The library versions whose internals this module was read against.
CHECKED = {"trl": "1.16.0", "transformers": "5.25.0", "peft": "0.21.2"}


def skip_dvclive_setup(callback: Any) -> None:
    """transformers' DVCLiveCallback.setup logs every TrainingArguments field to <dir>/params.yaml and then
    sets the private `_initialized`; setting that flag first skips it (the stage writes the resolved params
    into its out already, and a second copy would only drift). transformers 5.25."""
    callback._initialized = True


def skip_checkpoint_card(trainer: Any) -> None:
    """TRL's SFTTrainer and GRPOTrainer write a placeholder README.md model card into output_dir at every
    checkpoint save (`_save_checkpoint` calls `create_model_card`); its text varies from run to run and it is
    nobody's model card. Answering create_model_card on this trainer with nothing keeps it out of the
    checkpoints; the stage's own out has no TRL card either (merge writes the real one). TRL 1.16."""
    trainer.create_model_card = lambda *args, **kwargs: None


def completions_log(trainer: Any) -> dict | None:
    """GRPOTrainer's private completions log (`_logs`, what its `log_completions` prints), or None.

    Keys read: prompt, rewards {name: [...]}, advantages, extra {column: [...]} (the columns reward
    functions add through `log_extra`). TRL 1.16.
    """
    return getattr(trainer, "_logs", None)


def expose_head_bias(peft_model: Any) -> None:
    """Give peft's trainable-tokens wrapper around the LM head the `.bias` TRL's fused head reads.

    TRL 1.16 computes log-probabilities from `lm_head.weight` and `lm_head.bias` directly (no full
    logits). peft 0.21's TrainableTokensWrapper answers `.weight` with the merged weight (base rows +
    the trained backtrack row, so gradients reach the new row) but has no `.bias`. A head *with* a
    bias is refused: its bias row for the new token would not be trained.
    """
    from peft.utils.other import TrainableTokensWrapper

    head = peft_model.get_base_model().get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper):
        if head.original_module.bias is not None:
            raise NotImplementedError("the output head has a bias; training the backtrack token's bias entry "
                                      "with LoRA is not supported (train full weights: lora.enabled: false)")
        head.bias = None


@contextmanager
def peft_spelling_quiet() -> Iterator[None]:
    """Silence the one FutureWarning peft 0.21 causes by reading transformers 5's deprecated
    ``is_gradient_checkpointing`` whenever it wraps a model: it fires on every run, no setting of
    ours avoids it, and it would bury the warnings that matter. Nothing else is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
