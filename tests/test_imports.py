"""The import graph of llmhalluc/ and stages/, read with ast (nothing is imported).

Every import counts: top-level, inside a function (a lazy import still runs),
and under `if TYPE_CHECKING:`. So:
- there is no import circle anywhere in llmhalluc/ or stages/;
- each stage's deps in dvc.yaml cover the import closure of its script, and every
  repo file its params section names (a registry, an upstream out), so DVC
  re-runs a stage whenever code or data it uses changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.conftest import ROOT, dvc_yaml


def module_file(name: str) -> Path | None:
    """The file of a project module (llmhalluc.x.y), or None for anything outside the project."""
    if name != "llmhalluc" and not name.startswith("llmhalluc."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[Path]:
    """Project files `path` imports. `from pkg import name` counts pkg, and pkg.name too where it is a module.

    A package's __init__ is not counted for `import pkg.sub`: that is Python's ordinary
    package loading, not a dependency of the importer on the package's own code.
    """
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sub = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name for name in sub if module_file(name)] or [node.module]
            if len(names) < len(sub):  # names that are not modules come from the package itself
                names.append(node.module)
        for name in names:
            file = module_file(name)
            if file is not None and file != path:
                found.add(file)
    return found


def graph() -> dict[Path, set[Path]]:
    files = [*sorted((ROOT / "llmhalluc").rglob("*.py")), *sorted((ROOT / "stages").glob("*.py"))]
    return {file: imports_of(file) for file in files}


def closure(start: Path, edges: dict[Path, set[Path]]) -> set[Path]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(edges: dict[Path, set[Path]]) -> list[Path] | None:
    state: dict[Path, int] = {}  # 1: on the current path, 2: done
    stack: list[Path] = []

    def visit(node: Path) -> list[Path] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_walker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("from llmhalluc.params import Section\n"
                      "def f():\n    from llmhalluc import models\n    import llmhalluc.answers\n")
    assert {rel(p) for p in imports_of(script)} == {
        "llmhalluc/params/__init__.py", "llmhalluc/models.py", "llmhalluc/answers.py"}
    a, b, c = Path("a"), Path("b"), Path("c")
    assert find_cycle({a: {b}, b: {c}, c: {a}}) == [a, b, c, a]
    assert find_cycle({a: {b}, b: {c}, c: set()}) is None


def test_no_import_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(map(rel, cycle))


def _covered(path: str, entries: list[str]) -> bool:
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in entries)


def _written(path: str, outs: list[str]) -> bool:
    """An out, inside one, or a folder of outs (dvclive/train_sft holds the stage's plots and metrics)."""
    return _covered(path, outs) or any(out.startswith(path + "/") for out in outs)


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _names(items) -> list[str]:
    return [next(iter(item)) if isinstance(item, dict) else item for item in items or []]


def test_every_stage_depends_on_its_import_closure_and_what_it_reads() -> None:
    pipeline = dvc_yaml(ROOT)["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    every_out = {out for stage in pipeline.values() for out in _names(stage.get("outs")) + _names(stage.get("metrics"))}
    edges = graph()
    missing = []
    for name, stage in pipeline.items():
        deps = stage.get("deps") or []
        missing += [f"{name}: lists {dep} twice" for dep in sorted({d for d in deps if deps.count(d) > 1})]
        outs = _names(stage.get("outs")) + _names(stage.get("metrics")) + _names(stage.get("plots"))
        script = ROOT / "stages" / f"{name}.py"
        assert stage["cmd"] == f"python -m stages.{name}", f"{name}: cmd should run {rel(script)} as a module"
        for file in sorted(closure(script, edges)):
            if not _covered(rel(file), deps):
                missing.append(f"{name}: imports {rel(file)}")
        # Paths named in the stage's own params section: a repo file or another stage's out is read. TRL's
        # output_dir is the stage's scratch (its checkpoints): written, never read from another stage.
        scratch = {str(params[section].get("output_dir", "")).rstrip("/") for section in stage.get("params", [])}
        for value in [s for section in stage.get("params", []) for s in _strings(params[section])]:
            value = value.rstrip("/")
            if value in ("", ".") or value in scratch:
                continue
            named = (ROOT / value).exists() or any(_covered(value, [out]) for out in every_out)
            if value and named and not _covered(value, deps) and not _written(value, outs):
                missing.append(f"{name}: reads {value} (params.yaml)")
        # Repo paths the stage script spells out itself.
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value:
                value = node.value.rstrip("/")
                if " " in value or "{" in value:
                    continue
                named = (ROOT / value).exists() or any(_covered(value, [out]) for out in every_out)
                if named and not _covered(value, deps) and not _written(value, outs):
                    missing.append(f"{name}: reads {value} ({rel(script)})")
        # And the other way: a project file in deps that the stage does not import re-runs it for nothing.
        used = [rel(file) for file in closure(script, edges)]
        for dep in deps:
            if dep.startswith(("llmhalluc", "stages")) and not any(_covered(file, [dep]) for file in used):
                missing.append(f"{name}: depends on {dep} but never imports it")
    assert not missing, "dvc.yaml deps do not match what the stage uses:\n" + "\n".join(missing)
