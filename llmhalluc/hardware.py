"""What this machine can run: a CUDA GPU, bfloat16, TF32, and the optional GPU packages.

Three places ask the same questions: the params layer refuses a value the machine
cannot honour (bf16 on a CPU, vLLM without its package), resolve fills TRL's
hardware keys the user left open, and `dtype: auto` picks bf16 only where it
runs. One answer each, here, so they cannot disagree. torch is imported only
when a question needs it: a params typo must still fail in well under 2 s.

This module is the params layer's Machine (llmhalluc.params.provided): it provides itself on import.
"""

from __future__ import annotations

import importlib.util
import sys

from llmhalluc.params.provided import provide


def installed(module: str) -> bool:
    """The package can be imported (found without importing it: vLLM's import alone takes seconds)."""
    return importlib.util.find_spec(module) is not None


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16() -> bool:
    """A CUDA GPU that computes in bfloat16 (what `dtype: auto` and TRL's `bf16` default pick)."""
    import torch

    return cuda() and torch.cuda.is_bf16_supported()


def tf32() -> bool:
    """An Ampere or newer GPU (TF32 matmuls)."""
    import torch

    return cuda() and torch.cuda.get_device_capability()[0] >= 8


def vllm_problem() -> str | None:
    """Why vLLM cannot run here (its package is the optional [gpu] extra; it needs a CUDA GPU), or None."""
    if not installed("vllm"):
        return "needs the vllm package, which is not installed (pip install -e '.[gpu]' on a GPU machine)"
    if not cuda():
        return "needs a CUDA GPU and this machine has none"
    return None


provide("machine", sys.modules[__name__])
