"""The project's own keys, declared once, as typed classes with one line of help each.

`sft` and `grpo` also take every TRL field flat (see trl_schema); the classes
here hold only what TRL does not know about. A name TRL also uses is refused
when the schema is built, so the two can never shadow each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Group 1 is the final answer: everything after "The answer is" (any case, an optional colon)
#: up to the first sentence-ending period (one followed by a space or the end, so "2.50" stays
#: whole) or the end of the line; it never spans two sentences. Scoped flags only (`(?i:...)`),
#: so the pattern can be embedded in a larger one, as the format reward does. (llmhalluc.answers reads with it.)
DEFAULT_PATTERN = r"(?i:the (?:final )?answer is)[ \t]*:?[ \t]*((?:[^.\n]|\.(?!\s|$))+?)[ \t]*(?:\.(?=\s|$)|(?=\n)|$)"
#: The gold answer of an unanswerable question (also what eval assumes when meta.json predates the key).
DEFAULT_ABSTAIN = "unanswerable"
#: The backtrack token's text (llmhalluc.backtrack: what one backtrack retracts).
DEFAULT_TOKEN = "<|backtrack|>"

#: model_name_or_path prefix of a model built locally from a seed (a colon never occurs in a hub id).
BUILTIN_PREFIX = "builtin:"
#: model_name_or_path of the tiny model built from a seed.
BUILTIN_TINY = f"{BUILTIN_PREFIX}tiny-qwen2"
#: model_name_or_path prefix naming an installed Python package whose folder holds the model files.
PACKAGE_PREFIX = "package:"

#: The kinds of wrong step (llmhalluc.datasets.mistakes registers one maker per name; a test keeps the two equal).
ErrorKind = Literal["plausible", "lookup", "random"]
#: What eval's probe injects: a kind, or the kind the model was trained on (its lineage).
ProbeKind = Literal["trained", "plausible", "lookup", "random"]

#: Weight dtypes a stage can load or save, by torch's names (models maps them to torch dtypes).
Dtype = Literal["float32", "bfloat16", "float16"]
#: The same, or auto: bf16 on a capable GPU, else float32.
DtypeOrAuto = Literal["auto", Dtype]


def param(default, help: str, *, at_least: float | None = None, above: float | None = None,
          at_most: float | None = None, below: float | None = None, check: str | None = None, read: bool = False):
    """A dataclass field with its one line of help and what values it takes; mutable defaults go through a
    factory.

    The bounds (of a number; the numeric members of a union) and `check` (a name in params.provided,
    for a string) are part of the field's type: the loader refuses a value outside them with its
    file:line, as it refuses a wrong type, so no cross-field rule has to repeat them. `read`: the value
    names a path (or a mapping of them) the stage reads, which a run needs to exist (hub ids excepted).
    """
    bounds = {"low": above if above is not None else at_least, "low_open": above is not None,
              "high": below if below is not None else at_most, "high_open": below is not None}
    metadata = {"help": help, "bounds": bounds, "check": check, "read": read}
    if isinstance(default, (list, dict)) or hasattr(default, "__dataclass_fields__"):
        factory = default.copy if isinstance(default, (list, dict)) else type(default)
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ArithmeticParams:
    """The built-in synthetic task: chains of small additions and subtractions."""

    min_steps: int = param(1, "fewest operations in one problem", at_least=1)
    max_steps: int = param(2, "most operations in one problem")
    max_operand: int = param(9, "operands are drawn from 1..max_operand", at_least=1)
    allow_negative: bool = param(False, "allow intermediate results below zero")


@dataclass
class SplitSizes:
    """How many problems each prepared set gets."""

    sft: int = param(1500, "SFT training examples", at_least=1)
    grpo: int = param(128, "GRPO prompts", at_least=1)
    eval: int = param(200, "held-out evaluation problems (never seen in training)", at_least=1)


@dataclass
class BacktrackAugmentParams:
    """Where errors are inserted into SFT solutions for the model to retract."""

    error_rate: float = param(0.0, "share of SFT examples that get an error and its backtracks (0 = error-free)",
                              at_least=0, at_most=1)
    errors_per_example: int = param(1, "errors inserted into an augmented example (placement: example)",
                                    at_least=1)
    error_kind: ErrorKind = param("plausible", "plausible (a near-miss result) | lookup (a wrong operand, consistent "
                                  "arithmetic) | random (random characters: the positive control)")
    placement: Literal["example", "boundary"] = param(
        "example", "example: error_rate of the examples get errors | boundary: every step boundary gets one with "
        "probability error_rate, independently")


@dataclass
class PrepareParams:
    """params.yaml[prepare]."""

    seed: int = param(0, "seed for generation, sampling and augmentation")
    out_dir: str = param("data/prepared", "where the prepared sets are written (the stage's out)")
    registry: str = param("configs/datasets.yaml", "the dataset registry the names below refer to")
    train: list[str] = param(["arithmetic"], "registry entries the SFT and GRPO sets are drawn from")
    eval: list[str] = param(["arithmetic"], "registry entries the eval set is drawn from (held out from train)")
    sizes: SplitSizes = param(SplitSizes(), "most examples per prepared set (fewer if the sources run out)")
    abstain_answer: str = param(DEFAULT_ABSTAIN, "the answer of a question that cannot be answered")
    answer_pattern: str = param(DEFAULT_PATTERN, "regex whose group 1 is the final answer (the last match wins); "
                                "recorded in meta.json for GRPO and eval", check="answer_pattern")
    on_bad_row: Literal["error", "skip"] = param("error", "a row that cannot be converted stops prepare, or is "
                                                 "dropped and counted in the stats")
    arithmetic: ArithmeticParams = param(ArithmeticParams(), "options of the built-in arithmetic generator")
    backtrack: BacktrackAugmentParams = param(BacktrackAugmentParams(), "backtrack augmentation of SFT data")
    check_steps: bool = param(False, "every step of every set ends with its own recomputation, right or wrong: "
                              "'7 + 3 = 11 (check: 7 + 3 = 10).' (llmhalluc.datasets.step_check)")
    system_prompt: str = param("Solve the problem step by step.", "system message shared by SFT, GRPO and eval")


@dataclass
class TinyModelParams:
    """Shape of the built-in model, used when model_name_or_path is the built-in name."""

    vocab_size: int = param(512, "BPE vocabulary size of the tokenizer trained on the prepared data", at_least=1)
    hidden_size: int = param(192, "width of the transformer", at_least=1)
    num_layers: int = param(3, "number of transformer layers", at_least=1)
    num_heads: int = param(4, "attention heads (must divide hidden_size)", at_least=1)
    intermediate_size: int = param(384, "width of the MLP", at_least=1)
    seed: int = param(0, "seed of the random initial weights")


@dataclass
class LoraParams:
    """A LoRA adapter through peft; enabled: false trains all weights."""

    enabled: bool = param(False, "train a LoRA adapter instead of all weights")
    r: int = param(16, "LoRA rank", at_least=1)
    alpha: int = param(32, "LoRA scaling numerator (lora_alpha)", above=0)
    dropout: float = param(0.0, "dropout on the LoRA path", at_least=0, below=1)
    target_modules: str | list[str] = param("all-linear", "module names to adapt, or 'all-linear'")


@dataclass
class LauncherParams:
    """How the stage's training process starts."""

    kind: Literal["python", "accelerate"] = param("python", "python: this process | accelerate: accelerate launch")
    num_processes: int = param(1, "processes the trainer runs on, all machines together",
                               at_least=1)
    config_file: str | None = param(None, "accelerate config for kind accelerate (configs/accelerate/*.yaml)")
    main_process_port: int | None = param(None, "rendezvous port; unset: a free port, so parallel runs never clash",
                                          at_least=1024, at_most=65535)


@dataclass
class BacktrackTokenParams:
    """The token that deletes the token before it."""

    token: str = param(DEFAULT_TOKEN, "text of the special token (reused if the tokenizer has it)")
    init: Literal["mean", "semantic", "description", "combined"] = param("mean", "how its embedding rows start")
    noise_std: float = param(0.01, "noise added to the initial rows, relative to the mean row norm", at_least=0)
    unit: Literal["token", "step", "retry"] = param(
        "token", "what one backtrack retracts: token | step | retry (llmhalluc.backtrack); recorded with the model")
    lr_multiplier: float = param(1.0, "the token's rows move m times as far per optimiser step (1: like every row)",
                                 above=0)
    report_problems: int = param(16, "SFT records whose P(backtrack) is reported before and after training (0: off)",
                                 at_least=0)


@dataclass
class MinedErrorsParams:
    """sft.own_errors: retry data from the model's own mistakes (llmhalluc.mining), mined after a clean first pass."""

    source: Literal["own", "synthetic"] = param(
        "own", "where pass 2's errors come from: own (mined from the first-pass model) | synthetic (prepare's near "
        "misses: the control that shares the two passes)")
    rate: float = param(0.0, "share of SFT records whose error is replaced by one of the model's own (0 = off)",
                        at_least=0, at_most=1)
    after_steps: int = param(300, "optimiser steps of the first pass, on the records without errors (< max_steps)",
                             at_least=1)
    samples: int = param(4, "completions sampled per chosen record; the first with a wrong step is kept", at_least=1)
    temperature: float = param(1.0, "sampling temperature of those completions", above=0)
    max_new_tokens: int = param(64, "longest sampled completion", at_least=1)
    batch_size: int = param(64, "prompts generated together", at_least=1)


@dataclass
class SftParams:
    """params.yaml[sft], besides SFTConfig's own fields."""

    model_name_or_path: str = param(BUILTIN_TINY, "hub id, local folder, package:<module> (the folder of an "
                                    "installed Python package), or the built-in tiny model", read=True)
    gguf_file: str | None = param(None, "a .gguf file in model_name_or_path: dequantized once (needs the gguf "
                                  "package) into a cache folder keyed by the file's sha256")
    tiny_model: TinyModelParams = param(TinyModelParams(), "shape of the built-in model")
    data_dir: str = param("data/prepared", "prepared data written by the prepare stage", read=True)
    model_dir: str = param("models/sft", "where the trained model is written (the stage's out)")
    backtrack: BacktrackTokenParams = param(BacktrackTokenParams(), "the backtrack token")
    mask_errors: bool = param(False, "also keep the error tokens out of the loss")
    own_errors: MinedErrorsParams = param(MinedErrorsParams(), "retry data from the model's own mistakes (two passes)")
    dtype: DtypeOrAuto = param("auto", "weights dtype; auto: bf16 on GPU")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = param(
        "auto", "attention kernel; auto lets transformers choose"
    )
    lora: LoraParams = param(LoraParams(), "LoRA adapter options")
    launcher: LauncherParams = param(LauncherParams(), "how the trainer is started")


@dataclass
class FormatRewardOptions:
    """grpo.rewards.format: the answer sentence the completion must end with."""

    terminator: str = param(".", "text that closes the answer sentence ('' for none)")


@dataclass
class BacktrackRewardOptions:
    """grpo.rewards.backtrack: how backtrack use is scored (the table in llmhalluc.rewards.backtrack_use)."""

    max_backtracks: int | Literal["auto"] = param(
        "auto", "backtrack tokens allowed in one completion before the penalty grows; auto: 2 x the most one SFT "
        "example carried (the SFT model's lineage), at least 1", at_least=1)
    fix_reward: float = param(1.0, "reward of a completion whose backtracks fixed a wrong span into a right answer",
                              at_least=0)
    penalty: float = param(1.0, "penalty of backtracks that waste or harm (over the cap, wrong answer, ...)",
                           at_least=0)


@dataclass
class LengthRewardOptions:
    """grpo.rewards.length: a soft penalty over a token budget."""

    max_tokens: int = param(40, "completion tokens (backtracks included) allowed before the penalty starts", at_least=1)
    penalty: float = param(0.5, "penalty at twice the budget and beyond; it grows linearly from the budget", at_least=0)


@dataclass
class RewardsParams:
    """grpo.rewards: one options section per registered reward that has options (used when grpo.reward_funcs
    names it); accuracy has none: what a right answer is comes from prepare (answers.AnswerRules)."""

    format: FormatRewardOptions = param(FormatRewardOptions(), "options of the format reward")
    backtrack: BacktrackRewardOptions = param(BacktrackRewardOptions(), "options of the backtrack reward")
    length: LengthRewardOptions = param(LengthRewardOptions(), "options of the length reward")


#: The GRPOConfig.generation_kwargs entry grpo.rollout_backtrack_bias travels in, by GRPOConfig.use_vllm
#: (transformers' GenerationConfig.sequence_bias, vLLM's SamplingParams.logit_bias; llmhalluc.backtrack.reach).
ROLLOUT_BIAS_KEY = {False: "sequence_bias", True: "logit_bias"}


@dataclass
class GrpoParams:
    """params.yaml[grpo], besides GRPOConfig's own fields."""

    model_name_or_path: str = param("models/sft", "the model GRPO starts from (the SFT stage's out)", read=True)
    data_dir: str = param("data/prepared", "prepared data written by the prepare stage", read=True)
    model_dir: str = param("models/grpo", "where the trained model is written (the stage's out)")
    reward_funcs: list[str] = param(["accuracy", "format"], "reward functions by registry name")
    rewards: RewardsParams = param(RewardsParams(), "per-reward options, by reward name")
    rollout_backtrack_bias: float = param(0.0, "added to the backtrack token's logit in GRPO rollouts only "
                                          "(never in eval or the saved model); 0: unbiased sampling")
    dtype: DtypeOrAuto = param("auto", "weights dtype; auto: bf16 on GPU")
    lora: LoraParams = param(LoraParams(), "LoRA adapter options")
    launcher: LauncherParams = param(LauncherParams(), "how the trainer is started")


@dataclass
class MergeParams:
    """params.yaml[merge]."""

    model_dir: str = param("models/grpo", "the trained model to merge (the GRPO stage's out)", read=True)
    out_dir: str = param("models/merged", "the plain HF model folder written (the stage's out)")
    dtype: Dtype = param("float32", "dtype of the saved weights")


@dataclass
class ProbeParams:
    """eval.probe: inject a near-miss step into gold solutions and measure what the model does next."""

    enabled: bool = param(True, "run the probe: detection, counting, repair, correction, false positives")
    problems: int = param(10, "held-out problems probed (the first N of eval.jsonl)", at_least=1)
    positions: list[int] | Literal["all"] = param(
        "all", "step indexes where the error replaces the gold step (negative: from the end), or all steps"
    )
    kinds: list[ProbeKind] = param(["trained"], "kinds of wrong step injected, each reported as probe.<kind>: "
                                   "trained (the model's, from its lineage) | plausible | lookup | random")


@dataclass
class RollbackParams:
    """eval.rollback: a decoder that acts on a backtrack (llmhalluc.rollback), beside plain greedy decoding."""

    enabled: bool = param(True, "also decode with rollback: the retracted tokens leave the context and the "
                          "retracted continuation is excluded at that point")
    max_retries: int = param(4, "rollbacks allowed per completion; after them the backtrack token is not emitted",
                             at_least=1)


@dataclass
class OwnErrorsParams:
    """eval.own_errors: check the steps of the model's own sampled solutions (the samples of eval.sampled)."""

    enabled: bool = param(True, "check each recomputable `a op b = c` step of the samples; P(backtrack) after it")


@dataclass
class SampledParams:
    """eval.sampled: n samples per problem at eval.temperature / eval.top_p, drawn once per model."""

    enabled: bool = param(True, "report sampled accuracy, pass@k, maj@k and backtracks on right vs wrong samples")
    n: int = param(4, "samples per problem (also the samples eval.own_errors checks)", at_least=1)
    problems: int = param(12, "problems sampled (the first N of eval.jsonl)", at_least=1)
    k: list[int] = param([1, 4], "k of pass@k and maj@k, each at most n")


@dataclass
class EvalParams:
    """params.yaml[eval]: the models compared side by side on prepare's held-out eval set."""

    models: dict[str, str] = param(
        {"sft": "models/sft", "grpo": "models/merged"},
        "name -> model folder or hub id; each is evaluated and reported under its name", read=True)
    include_base: bool = param(False, "also evaluate the base model recorded in base_from's lineage.json, as 'base'")
    base_from: str = param("models/sft", "model folder whose lineage.json records the base model")
    data_dir: str = param("data/prepared", "prepared data; eval reads only its held-out eval.jsonl and meta.json",
                          read=True)
    out_dir: str = param("eval", "per-example predictions of every model (the stage's out)")
    metrics_file: str = param("metrics/eval.json", "summary metrics DVC shows, one block per model")
    plots_dir: str = param("plots/eval", "CSV files behind the eval plots in dvc.yaml")
    backend: Literal["transformers", "vllm"] = param("transformers", "generation engine; vllm needs a CUDA GPU")
    batch_size: int = param(64, "prompts generated together (left padding)", at_least=1)
    max_new_tokens: int = param(64, "longest completion (tokens)", at_least=1)
    do_sample: bool = param(False, "sample instead of greedy decoding")
    temperature: float = param(1.0, "sampling temperature (with do_sample, and of eval.sampled)", above=0)
    top_p: float = param(1.0, "nucleus sampling mass (with do_sample, and of eval.sampled)", above=0, at_most=1)
    seed: int = param(0, "seed for sampling (re-applied before each model)")
    dtype: DtypeOrAuto = param("auto", "weights dtype; auto: bf16 on GPU")
    probe: ProbeParams = param(ProbeParams(), "the injected-error probe (teacher-forced, on gold solutions)")
    own_errors: OwnErrorsParams = param(OwnErrorsParams(), "P(backtrack) after the model's own wrong vs right steps")
    sampled: SampledParams = param(SampledParams(), "sampled eval: accuracy, pass@k, maj@k")
    rollback: RollbackParams = param(RollbackParams(), "greedy decoding that rolls back on a backtrack")
    transitions: bool = param(True, "count wrong->right and right->wrong between consecutive models of eval.models")


#: params.yaml section -> the class of its project keys.
PROJECT_PARAMS: dict[str, type] = {
    "prepare": PrepareParams,
    "sft": SftParams,
    "grpo": GrpoParams,
    "merge": MergeParams,
    "eval": EvalParams,
}
