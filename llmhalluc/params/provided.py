"""What the params checks ask of the library above them, provided by the module that knows it.

The params layer imports no other llmhalluc module (tests/test_params_leaf.py), so facts flow up to it:
each owner provides its own when it is imported.

    llmhalluc.answers             answer_pattern, answer_sentence: the checks of prepare's answer rules
    llmhalluc.hardware            machine: what this computer can run (the Machine below)
    llmhalluc.launcher            accelerate_config: accelerate's config file as data
    llmhalluc.rewards             reward_names: the registered rewards
    llmhalluc.datasets.registry   dataset_registry: the entries of a registry file, validated

llmhalluc.stage imports the owners every stage needs (answers, hardware, launcher), and a stage
script the owners only its own section asks for (prepare: datasets.registry; train_grpo: rewards),
so every fact is in place before the stage reads params.yaml, and prepare never loads the rewards.
A check asks only when it needs the fact; asking for one nobody provided is a RuntimeError, a bug
in an import list, never a check that silently passes.
"""

from __future__ import annotations

from typing import Any, Protocol


class Machine(Protocol):
    """What this machine can run (llmhalluc.hardware answers; torch is imported only by a question that needs it)."""

    def installed(self, module: str) -> bool: ...
    def cuda(self) -> bool: ...
    def bf16(self) -> bool: ...
    def tf32(self) -> bool: ...
    def vllm_problem(self) -> str | None: ...


_PROVIDED: dict[str, Any] = {}


def provide(name: str, value: Any) -> None:
    """Called by the module that owns `name`, when it is imported."""
    _PROVIDED[name] = value


def provided(name: str) -> Any:
    try:
        return _PROVIDED[name]
    except KeyError:
        raise RuntimeError(f"llmhalluc.params asked for {name!r}, which no imported module provided: import its "
                           "owner before loading params (llmhalluc/params/provided.py lists them)") from None


def machine() -> Machine:
    return provided("machine")
