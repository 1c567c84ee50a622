"""Read params.yaml the way DVC writes it: YAML 1.2.

`dvc exp run -S grpo.learning_rate=1e-6` writes `1e-06`. PyYAML follows YAML 1.1,
where a float needs a dot, so it reads that as the *string* "1e-06" and a
trainer then either crashes late or, worse, a lenient layer drops it. ruamel.yaml
implements 1.2 (the same library DVC writes with), so `1e-06` is a float and
`yes`/`no`/`on`/`off` stay strings. We also keep the line of every key so an
error can point at `params.yaml:42`.
"""

from __future__ import annotations

import re
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
        raise ParamsError(_syntax_problem(path, text, exc)) from exc
    if root is None:
        root = CommentedMap()
    if not isinstance(root, CommentedMap):
        kind = "list" if isinstance(root, list) else type(root).__name__  # not ruamel's CommentedSeq
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {kind}")
    lines: dict[KeyPath, int] = {}
    return ParamsFile(path, _plain(root, (), lines), lines)


def _syntax_problem(path: Path, text: str, exc: MarkedYAMLError) -> str:
    """`file:line: key.path: invalid YAML: why`, the key path read off the text by indentation (it does not parse).

    ruamel names where it stopped and, for most errors, where the construct it was reading began (its
    context). A block mapping that cannot be closed is named by that mapping, at the line it stopped; a
    duplicate key, or an error with no context (`a: b: c`), by the key on the line it stopped; anything
    else (an unclosed `[`, `{` or quote) by the key whose value began it, at that key's line.
    """
    mark, context, why = exc.problem_mark, exc.context_mark, exc.context or ""
    number = mark.line + 1 if mark is not None else None
    key = _key_path_at(text, number) if number else ()
    if context is not None and "block mapping" in why:
        key = _key_path_at(text, context.line + 1)[:-1] or key
    elif context is not None and "constructing a mapping" not in why:
        number = context.line + 1
        key = _key_path_at(text, number)
    where = f"{path}:{number}" if number else str(path)
    return f"{where}: {'.'.join(key) + ': ' if key else ''}invalid YAML: {exc.problem}"


#: A block-mapping key at the start of a line: plain (up to the first `: `), or quoted.
_KEY = re.compile(r"""^( *)(?:- +)?([^\s#'"\[{][^#]*?|'[^']*'|"[^"]*")[ \t]*:(?:[ \t]|$)""")


def _key_path_at(text: str, number: int) -> tuple[str, ...]:
    """The key path written on line `number` (1-based) of a block-style YAML text, read by indentation
    alone; () where the line holds no key."""
    enclosing: list[tuple[int, str]] = []  # (indent, key) of the `key:` lines that open a mapping around it
    for at, line in enumerate(text.splitlines()[:number], start=1):
        match = _KEY.match(line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2).strip("'\"")
        while enclosing and enclosing[-1][0] >= indent:
            enclosing.pop()
        if at == number:
            return (*(k for _, k in enclosing), key)
        if not line[match.end():].split(" #")[0].strip():  # `key:` alone opens a nested block
            enclosing.append((indent, key))
    return ()
