"""The bad-params catalogue: every class of params error, in every section, stops its stage the same way.

Each case edits the repo's params.yaml inside one section, runs that section's
stage script and asserts what a user sees: exit code 2, the message starting
with `params.yaml:<line>: <dotted.key.path>` (the line of the offending key),
every problem line naming a key path the user wrote, on the line the file has it
(TRL's own rules and YAML syntax errors too; only a missing section has no key
to name: NO_KEY_WRITTEN), no traceback, nothing on stdout, and every earlier out
of every stage byte-identical (nothing is written at all).

The matrix is checked for completeness: each (error class, section) pair has
a case or a stated reason why the class cannot occur in that section.
tests/test_params_errors.py keeps the hand-picked cases of particular keys
(GRPO batch arithmetic, reward options, ...); this file is the systematic sweep.

The catalogue runs the real stage scripts in-process (a params error stops the
stage before anything heavy is imported, so that is the same code path at a
hundredth of the cost); `test_a_real_run_of_each_stage_leaves_outs_untouched`
runs each stage as its own process, without --dry-run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_stage_script
from tests.outs import assert_names_written_keys, plant_earlier_outs, run_in_process, tree

#: params.yaml section -> the stage script that reads it.
SCRIPTS = {"prepare": "prepare", "sft": "train_sft", "grpo": "train_grpo", "merge": "merge", "eval": "eval"}

CLASSES = [
    "unknown-key",          # a misspelled key of the section, with the nearest valid name
    "unknown-nested-key",   # the same one level down (sizes, tiny_model, launcher, rewards.*)
    "wrong-type",           # a value YAML parsed as another type than the key takes
    "bad-choice",           # a string outside the key's closed set of values
    "out-of-range",         # the right type, a value the stage cannot run with
    "cross-field",          # two keys that are fine alone and inconsistent together
    "missing-input",        # a path the stage reads that does not exist (checked on a real run)
    "hardware",             # bf16 / fp16 / tf32 / float16 training on a machine without the GPU for it
    "yaml-syntax",          # the file does not parse
    "duplicate-key",        # a key written twice in one mapping (YAML 1.2 forbids it)
    "section-missing",      # the stage's section is not in the file (e.g. misspelled)
    "section-not-mapping",  # the section is a scalar or a list
    "nested-not-mapping",   # a nested section is a scalar
]

#: (class, section) pairs that cannot happen, and why: the matrix below is complete without them.
NOT_APPLICABLE = {
    ("unknown-nested-key", "merge"): "merge has no nested sections",
    ("unknown-nested-key", "eval"): "eval has no nested sections",
    ("nested-not-mapping", "merge"): "merge has no nested sections",
    ("nested-not-mapping", "eval"): "eval has no nested sections",
    ("cross-field", "merge"): "merge has three independent keys",
    ("cross-field", "eval"): "eval's sampling keys are independent (each is range-checked)",
    ("hardware", "prepare"): "prepare runs no model",
    ("hardware", "merge"): "merge only casts and saves weights: every dtype works on CPU",
    ("hardware", "eval"): "eval has no precision flags; its dtype float16 runs on CPU too",
    ("out-of-range", "merge"): "merge's keys are two paths and a dtype choice: nothing numeric",
}


@dataclass
class Case:
    section: str
    cls: str
    #: how params.yaml is changed: ("sub", old, new) inside the section, ("block", header, new) replaces a
    #: nested block (its header line and everything indented under it), ("section", new) replaces the section
    change: tuple
    #: expected stderr: the first fragment must follow `params.yaml:<line of anchor>: `
    fragments: list[str]
    #: text on the line the error must name (None: the message names the file alone)
    anchor: str | None = None
    dry_run: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.section}-{self.cls}" + (f"-{self.extra['tag']}" if "tag" in self.extra else "")


def sub(old: str, new: str) -> tuple:
    return ("sub", old, new)


CASES = [
    # --- prepare -------------------------------------------------------------------------------------------
    Case("prepare", "unknown-key", sub("  seed: 0 ", "  sede: 0 "),
         ["prepare.sede: unknown key (did you mean prepare.seed"], "sede:"),
    Case("prepare", "unknown-nested-key", sub("    max_operand: 9 ", "    max_operant: 9 "),
         ["prepare.arithmetic.max_operant: unknown key (did you mean prepare.arithmetic.max_operand?)"],
         "max_operant:"),
    Case("prepare", "wrong-type", sub("  seed: 0 ", '  seed: "zero" '),
         ["prepare.seed: expected int, got str 'zero'"], "seed:"),
    Case("prepare", "bad-choice", sub("  on_bad_row: error ", "  on_bad_row: skipp "),
         ["prepare.on_bad_row: 'skipp' is not allowed; valid: 'error', 'skip' (did you mean 'skip'?)"],
         "on_bad_row:"),
    Case("prepare", "out-of-range", sub("    error_rate: 0.0 ", "    error_rate: 1.5 "),
         ["prepare.backtrack.error_rate: must be in [0, 1], got 1.5"], "error_rate:"),
    Case("prepare", "cross-field", sub("    min_steps: 1 ", "    min_steps: 3 "),
         ["prepare.arithmetic.min_steps: 3 exceeds max_steps 2"], "min_steps:"),
    Case("prepare", "missing-input", sub("  registry: configs/datasets.yaml", "  registry: configs/nope.yaml"),
         ["prepare.registry: no such file 'configs/nope.yaml'"], "registry:", dry_run=False),
    Case("prepare", "yaml-syntax", sub("    sft: 1500 ", "    sft: 1500: 1 "),
         ["prepare.sizes.sft: invalid YAML: mapping values are not allowed here"], "sft: 1500: 1"),
    Case("prepare", "duplicate-key", sub("  seed: 0 ", "  seed: 0\n  seed: 1 "),
         ['prepare.seed: invalid YAML: found duplicate key "seed"'], "seed: 1"),
    Case("prepare", "nested-not-mapping", ("block", "  sizes:", "  sizes: 100"),
         ["prepare.sizes: expected a mapping, got int"], "sizes: 100"),
    # --- sft -----------------------------------------------------------------------------------------------
    Case("sft", "unknown-key", sub("  learning_rate: 0.001 ", "  learning_rat: 0.001 "),
         ["sft.learning_rat: unknown key (did you mean sft.learning_rate"], "learning_rat:"),
    Case("sft", "unknown-nested-key", sub("    hidden_size: 192 ", "    hiden_size: 192 "),
         ["sft.tiny_model.hiden_size: unknown key (did you mean sft.tiny_model.hidden_size?)"], "hiden_size:"),
    Case("sft", "wrong-type", sub("  mask_errors: false ", "  mask_errors: maybe "),
         ["sft.mask_errors: expected bool, got str 'maybe'"], "mask_errors:"),
    Case("sft", "bad-choice", sub("    init: mean ", "    init: meen "),
         ["sft.backtrack.init: 'meen' is not allowed; valid: 'mean', 'semantic', 'description', 'combined' "
          "(did you mean 'mean'?)"], "init: meen"),
    Case("sft", "out-of-range", sub("    dropout: 0.0 ", "    dropout: 1.0 "),
         ["sft.lora.dropout: must be in [0, 1), got 1.0"], "dropout:"),
    Case("sft", "cross-field", sub("    num_heads: 4 ", "    num_heads: 5 "),
         ["sft.tiny_model.num_heads: 5 does not divide hidden_size 192"], "num_heads:"),
    Case("sft", "cross-field", sub("  output_dir: checkpoints/sft ", "  output_dir: models/sft "),
         ["sft.output_dir: checkpoints and sft.model_dir (models/sft) must be different folders"], "output_dir:",
         extra={"tag": "dirs"}),
    Case("sft", "cross-field", ("block", "  own_errors:", "  own_errors:\n    rate: 0.5\n    after_steps: 600"),
         ["sft.own_errors.after_steps: 600 must be in 1..sft.max_steps - 1 (sft.max_steps is 600)"], "after_steps:",
         extra={"tag": "own-errors"}),
    Case("sft", "missing-input", sub("  data_dir: data/prepared ", "  data_dir: ./data/nope "),
         ["sft.data_dir: path './data/nope' does not exist"], "data_dir:", dry_run=False),
    # All hardware problems of a section are reported at once: one run (importing torch) covers them.
    Case("sft", "hardware", sub("  dtype: auto ", "  dtype: float16\n  bf16: true\n  tf32: true "),
         ["sft.dtype: float16 training needs a CUDA GPU", "sft.bf16: true needs a GPU with bfloat16 support",
          "sft.tf32: true needs an Ampere or newer GPU"], "dtype: float16"),
    Case("sft", "yaml-syntax", sub("    num_layers: 3 ", "     num_layers: 3 "),
         ["sft.tiny_model: invalid YAML"], "num_layers:"),
    Case("sft", "duplicate-key", sub("  max_steps: 600 ", "  max_steps: 600\n  max_steps: 30 "),
         ['sft.max_steps: invalid YAML: found duplicate key "max_steps"'], "max_steps: 30 "),
    Case("sft", "nested-not-mapping", ("block", "  lora:", "  lora: true"),
         ["sft.lora: expected a mapping, got bool"], "lora: true"),
    # --- grpo ----------------------------------------------------------------------------------------------
    Case("grpo", "unknown-key", sub("  temperature: 0.5 ", "  temperatur: 0.5 "),
         ["grpo.temperatur: unknown key (did you mean grpo.temperature"], "temperatur:"),
    Case("grpo", "unknown-nested-key", sub("    num_processes: 1 ", "    num_proceses: 1 "),
         ["grpo.launcher.num_proceses: unknown key (did you mean grpo.launcher.num_processes"],
         "num_proceses:"),
    Case("grpo", "wrong-type", sub("  max_completion_length: 64 ", "  max_completion_length: [64] "),
         ["grpo.max_completion_length: expected int or null, got list [64]"], "max_completion_length:"),
    Case("grpo", "bad-choice", sub("    kind: python ", "    kind: torchrun "),
         ["grpo.launcher.kind: 'torchrun' is not allowed; valid: 'python', 'accelerate'"], "kind: torchrun"),
    Case("grpo", "out-of-range", sub("    alpha: 32 ", "    alpha: 0 "),
         ["grpo.lora.alpha: must be > 0, got 0"], "alpha: 0"),
    Case("grpo", "cross-field", sub("  num_generations: 4 ",
                                    "  num_generations: 4\n  generation_batch_size: 8\n  steps_per_generation: 2 "),
         ["grpo.generation_batch_size: TRL's GRPOConfig rejects the configuration", "steps_per_generation"],
         "generation_batch_size:"),
    # TRL's message names no key (num_generations < 2) or one the user never wrote (generation_batch_size):
    # the key is found by asking TRL without each written key (llmhalluc.params.resolve._rejected).
    Case("grpo", "cross-field", sub("  num_generations: 4 ", "  num_generations: 1 "),
         ["grpo.num_generations: TRL's GRPOConfig rejects the configuration: GRPO requires at least 2 generations",
          "(TRL accepts it without grpo.num_generations at params.yaml:"], "num_generations:",
         extra={"tag": "trl-unnamed"}),
    Case("grpo", "cross-field", sub("  num_generations: 4 ", "  num_generations: 3 "),
         ["grpo.num_generations: TRL's GRPOConfig rejects the configuration: generation_batch_size (16) must be "
          "divisible by num_generations (3)", "it also depends on grpo.per_device_train_batch_size at params.yaml:"],
         "num_generations:", extra={"tag": "trl-derived"}),
    Case("grpo", "missing-input", sub("  data_dir: data/prepared ", "  data_dir: ./data/nope "),
         ["grpo.data_dir: path './data/nope' does not exist"], "data_dir:", dry_run=False),
    Case("grpo", "hardware", sub("  dtype: auto ", "  dtype: float16\n  fp16: true "),
         ["grpo.dtype: float16 training needs a CUDA GPU", "grpo.fp16: true needs a CUDA GPU"], "dtype: float16"),
    Case("grpo", "yaml-syntax", sub("  beta: 0.0 ", "  beta: 0.0: 1 "),
         ["grpo.beta: invalid YAML: mapping values are not allowed here"], "beta: 0.0: 1"),
    Case("grpo", "duplicate-key", sub("      penalty: 0.5 ", "      penalty: 0.5\n      penalty: 0.1 "),
         ['grpo.rewards.length.penalty: invalid YAML: found duplicate key "penalty"'], "penalty: 0.1"),
    Case("grpo", "nested-not-mapping", ("block", "    format:", "    format: strict"),
         ["grpo.rewards.format: expected a mapping, got str"], "format: strict"),
    # --- merge ---------------------------------------------------------------------------------------------
    Case("merge", "unknown-key", sub("  dtype: float32 ", "  dtyp: float32 "),
         ["merge.dtyp: unknown key (did you mean merge.dtype?)"], "dtyp:"),
    Case("merge", "wrong-type", sub("  model_dir: models/grpo ", "  model_dir: [models/grpo] "),
         ["merge.model_dir: expected str, got list"], "model_dir:"),
    Case("merge", "bad-choice", sub("  dtype: float32 ", "  dtype: float64 "),
         ["merge.dtype: 'float64' is not allowed; valid: 'float32', 'bfloat16', 'float16'"], "dtype:"),
    Case("merge", "missing-input", sub("  model_dir: models/grpo ", "  model_dir: ./models/nope "),
         ["merge.model_dir: path './models/nope' does not exist"], "model_dir:", dry_run=False),
    # The quote closes in a comment of eval's; ruamel stops there, still inside merge's mapping.
    Case("merge", "yaml-syntax", sub("  dtype: float32 ", '  dtype: "float32 '), ["merge: invalid YAML"], None),
    Case("merge", "duplicate-key", sub("  dtype: float32 ", "  dtype: float32\n  dtype: float16 "),
         ['merge.dtype: invalid YAML: found duplicate key "dtype"'], "dtype: float16"),
    # --- eval ----------------------------------------------------------------------------------------------
    Case("eval", "unknown-key", sub("  batch_size: 64 ", "  batch_sise: 64 "),
         ["eval.batch_sise: unknown key (did you mean eval.batch_size?)"], "batch_sise:"),
    Case("eval", "wrong-type", sub("  do_sample: false ", "  do_sample: yes "),
         ["eval.do_sample: expected bool, got str 'yes'"], "do_sample:"),
    Case("eval", "bad-choice", sub("  dtype: auto ", "  dtype: float8 "),
         ["eval.dtype: 'float8' is not allowed; valid: 'auto', 'float32', 'bfloat16', 'float16'"], "dtype:"),
    Case("eval", "out-of-range", sub("  top_p: 1.0 ", "  top_p: 0 "), ["eval.top_p: must be in (0, 1], got 0"],
         "top_p:"),
    Case("eval", "missing-input", sub("  data_dir: data/prepared ", "  data_dir: ./data/nope "),
         ["eval.data_dir: path './data/nope' does not exist"], "data_dir:", dry_run=False),
    Case("eval", "yaml-syntax", sub("  seed: 0 ", "  seed: 0: 0 "),
         ["eval.seed: invalid YAML: mapping values are not allowed here"], "seed: 0: 0"),
    Case("eval", "duplicate-key", sub("  top_p: 1.0 ", "  top_p: 1.0\n  top_p: 0.9 "),
         ['eval.top_p: invalid YAML: found duplicate key "top_p"'], "top_p: 0.9"),
]
# Section-level classes, the same shape in every section.
for _name in SCRIPTS:
    CASES += [
        Case(_name, "section-missing", ("section", ""), [f"params.yaml: no section {_name!r}"]),
        Case(_name, "section-missing", ("section", f"{_name[:-1]}:\n  seed: 0\n"),
             [f"params.yaml: no section {_name!r}", f"is {_name[:-1]!r} at params.yaml:"], extra={"tag": "typo"}),
        Case(_name, "section-not-mapping", ("section", f"{_name}: [a, b]\n"),
             [f"{_name}: expected a mapping of keys, got list"], f"{_name}: [a, b]"),
    ]


def section_bounds(lines: list[str], section: str) -> tuple[int, int]:
    """[start, end) line indexes of a top-level section, header included."""
    start = lines.index(f"{section}:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    return start, end


def apply(text: str, case: Case) -> str:
    lines = text.splitlines()
    start, end = section_bounds(lines, case.section)
    kind = case.change[0]
    if kind == "section":
        new = case.change[1].splitlines()
        return "\n".join([*lines[:start], *new, *lines[end:]]) + "\n"
    block = "\n".join(lines[start:end]) + "\n"
    if kind == "sub":
        _, old, new = case.change
        assert block.count(old) == 1, f"test setup: {old!r} is not once in params.yaml[{case.section}]"
        block = block.replace(old, new)
    else:
        _, header, new = case.change
        rows = block.splitlines()
        at = next(i for i, row in enumerate(rows) if row.startswith(header))
        depth = len(header) - len(header.lstrip())
        stop = next((i for i in range(at + 1, len(rows)) if len(rows[i]) - len(rows[i].lstrip()) <= depth), len(rows))
        block = "\n".join([*rows[:at], new, *rows[stop:]]) + "\n"
    return "\n".join(lines[:start]) + "\n" + block + "\n".join(lines[end:]) + "\n"


def line_of(text: str, section: str, anchor: str) -> int:
    """1-based line of the first line of the section (or the file, for a replaced section) holding anchor."""
    lines = text.splitlines()
    try:
        start, end = section_bounds(lines, section)
    except ValueError:
        start, end = 0, len(lines)
    return 1 + next(i for i in range(start, end) if anchor in lines[i])


def workspace(tmp_path: Path, params: str) -> Path:
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "datasets.yaml", tmp_path / "configs" / "datasets.yaml")
    plant_earlier_outs(tmp_path)
    (tmp_path / "params.yaml").write_text(params)
    return tmp_path


#: Classes whose message cannot name a key the user wrote, and why.
NO_KEY_WRITTEN = {"section-missing": "the section the stage reads is not in the file; the message names it (and a "
                                     "near miss the user wrote, with its line: the -typo cases)"}


def assert_refused(case: Case, params: str, code: int, stdout: str, stderr: str, work: Path) -> None:
    assert code == 2, stderr
    if case.cls not in NO_KEY_WRITTEN:
        assert_names_written_keys(stderr, work / "params.yaml")
    if case.anchor is not None:
        first = f"params.yaml:{line_of(params, case.section, case.anchor)}: {case.fragments[0]}"
        assert first in stderr, f"expected {first!r} in:\n{stderr}"
    for fragment in case.fragments:
        assert fragment in stderr, f"expected {fragment!r} in:\n{stderr}"
    assert stderr.startswith("error: ") and "Traceback" not in stderr
    assert stdout == ""


def test_the_catalogue_covers_every_class_in_every_section():
    covered = {(c.cls, c.section) for c in CASES}
    for cls in CLASSES:
        for section in SCRIPTS:
            if (cls, section) not in covered:
                assert NOT_APPLICABLE.get((cls, section)), f"no case for {cls} in {section}, and no reason why"
    assert set(NO_KEY_WRITTEN) <= set(CLASSES)
    for cls, section in NOT_APPLICABLE:
        assert cls in CLASSES and section in SCRIPTS
        assert (cls, section) not in covered, f"{cls} in {section}: both a case and a reason why it cannot happen"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_params_error_exits_2_naming_file_line_and_key_with_outs_untouched(
    tmp_path: Path, params_text: str, case: Case
):
    if case.cls == "hardware":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: the values may be valid here")
    params = apply(params_text, case)
    work = workspace(tmp_path, params)
    before = tree(work)
    code, stdout, stderr = run_in_process(SCRIPTS[case.section], work, *(["--dry-run"] if case.dry_run else []))
    assert_refused(case, params, code, stdout, stderr, work)
    assert tree(work) == before


FILE_CASES = [
    # (id, params file content or None for no file, fragment after `<file>: `)
    ("no-file", None, "cannot read params file (No such file or directory)"),
    ("top-level-list", "- prepare\n- sft\n", "the top level must be a mapping of sections, got list"),
    ("empty", "", "no section"),
]


@pytest.mark.parametrize("section", SCRIPTS)
@pytest.mark.parametrize(("content", "fragment"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_unusable_params_file_exits_2_in_every_stage(tmp_path: Path, section: str, content, fragment: str):
    work = workspace(tmp_path, "")
    (work / "params.yaml").unlink()
    if content is not None:
        (work / "mine.yaml").write_text(content)
    before = tree(work)
    code, stdout, stderr = run_in_process(SCRIPTS[section], work, "--params", "mine.yaml")
    assert code == 2, stderr
    assert f"error: mine.yaml: {fragment}" in stderr and "Traceback" not in stderr
    assert stdout == "" and tree(work) == before


@pytest.mark.parametrize("section", ["merge", "eval"])
def test_a_dry_run_only_warns_about_missing_inputs(tmp_path: Path, params_text: str, section: str):
    """A dry run may come before the upstream stage has run: a missing input is a warning there, not an error."""
    case = next(c for c in CASES if c.section == section and c.cls == "missing-input")
    work = workspace(tmp_path, apply(params_text, case))
    before = tree(work)
    code, stdout, stderr = run_in_process(SCRIPTS[section], work, "--dry-run")
    assert code == 0, stderr
    assert f"warning: params.yaml:{line_of(apply(params_text, case), section, case.anchor)}: " \
           f"{case.fragments[0]} (a real run needs it)" in stderr
    assert '"model_dir": "./models/nope"' in stdout or '"data_dir": "./data/nope"' in stdout
    assert tree(work) == before


REAL_RUNS = {  # one case per section run as its own process, without --dry-run
    "prepare": ("prepare", "bad-choice"),
    "sft": ("sft", "unknown-nested-key"),
    "grpo": ("grpo", "cross-field"),
    "merge": ("merge", "missing-input"),
    "eval": ("eval", "missing-input"),
}


@pytest.mark.parametrize("section", REAL_RUNS)
def test_a_real_run_of_each_stage_leaves_outs_untouched(tmp_path: Path, params_text: str, section: str):
    case = next(c for c in CASES if (c.section, c.cls) == REAL_RUNS[section])
    params = apply(params_text, case)
    work = workspace(tmp_path, params)
    before = tree(work)
    result = run_stage_script(SCRIPTS[section], work)
    assert_refused(case, params, result.returncode, result.stdout, result.stderr, work)
    assert tree(work) == before
