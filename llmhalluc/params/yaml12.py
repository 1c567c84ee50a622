"""Read params.yaml the way DVC writes it: YAML 1.2.

`dvc exp run -S grpo.learning_rate=1e-6` writes `1e-06`. PyYAML follows YAML 1.1,
where a float needs a dot, so it reads that as the *string* "1e-06" and a
trainer then either crashes late or, worse, a lenient layer drops it. ruamel.yaml
implements 1.2 (the same library DVC writes with), so `1e-06` is a float and
`yes`/`no`/`on`/`off` stay strings. We also keep the line of every key so an
error can point at `params.yaml:42`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from llmhalluc.params.errors import ParamsError

KeyPath = tuple[str | int, ...]


class ParamsFile:
    """A parsed params file: plain Python data plus the line of each key path."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[KeyPath, int]):
        self.path = path
        self.data = data
        self.lines = lines

    def where(self, key_path: KeyPath) -> str:
        """`params.yaml:12` for the deepest ancestor of key_path that has a line."""
        for end in range(len(key_path), 0, -1):
            line = self.lines.get(tuple(key_path[:end]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)


def _plain(node: Any, prefix: KeyPath, lines: dict[KeyPath, int]) -> Any:
    """ruamel's round-trip objects -> dict/list/int/float/str, recording key lines (1-based)."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = (*prefix, str(key))
            line, _col = node.lc.key(key)
            lines[path] = line + 1
            out[str(key)] = _plain(value, path, lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            path = (*prefix, index)
            line, _col = node.lc.item(index)
            lines[path] = line + 1
            items.append(_plain(value, path, lines))
        return items
    # ScalarFloat / ScalarInt / ScalarBoolean subclass the builtins; strip the subclass
    # so what reaches TRL (and the resolved JSON) is exactly float / int / bool / str.
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def read_params_file(path: str | Path) -> ParamsFile:
    """Parse a YAML 1.2 file; a syntax error or a non-mapping top level is a ParamsError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror})") from exc
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{line}: invalid YAML: {exc.problem}") from exc
    if root is None:
        root = CommentedMap()
    if not isinstance(root, CommentedMap):
        kind = "list" if isinstance(root, list) else type(root).__name__  # not ruamel's CommentedSeq
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {kind}")
    lines: dict[KeyPath, int] = {}
    return ParamsFile(path, _plain(root, (), lines), lines)
