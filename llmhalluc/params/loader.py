"""Load one section of params.yaml, strictly: every key known, typed and consistent.

Order matters for speed: parse (ruamel, ~0.1 s), then the cached TRL schema
(JSON), then types and choices, then cross-field checks; torch is imported only
by the hardware checks, and only when a value asks for an accelerator. So a
typo fails in well under 2 s, before any model or data is touched.
"""

from __future__ import annotations

from pathlib import Path

from llmhalluc.params.checks import check
from llmhalluc.params.errors import ParamsError
from llmhalluc.params.schema import FieldSpec, Section, build, check_mapping, describe_dataclass, nearest
from llmhalluc.params.sections import PROJECT_PARAMS
from llmhalluc.params.trl_schema import TRL_CONFIGS, trl_schema
from llmhalluc.params.yaml12 import read_params_file

DEFAULT_PARAMS = Path("params.yaml")


def section_fields(name: str) -> tuple[dict[str, FieldSpec], dict[str, FieldSpec]]:
    """(project fields, TRL fields) of a section; a name in both is a bug in this project."""
    if name not in PROJECT_PARAMS:
        raise ParamsError(f"no stage reads a section named {name!r}; sections: {', '.join(PROJECT_PARAMS)}")
    project = describe_dataclass(PROJECT_PARAMS[name])
    trl = trl_schema(name) if name in TRL_CONFIGS else {}
    clash = sorted(set(project) & set(trl))
    if clash:
        raise RuntimeError(f"project keys of {name!r} shadow TRL fields: {clash}; rename them")
    return project, trl


def load_section(name: str, params_path: str | Path = DEFAULT_PARAMS, *, for_run: bool = True) -> Section:
    """Read, type-check and cross-check one section, or raise one ParamsError listing every problem.

    for_run=False (a dry run) reports missing input paths as warnings, since a
    dry run may come before the upstream stage has produced them.
    """
    file = read_params_file(params_path)
    if name not in file.data:
        close = nearest(name, [str(key) for key in file.data], n=1)
        hint = f"; is {close[0]!r} at {file.where((close[0],))} a misspelling of it?" if close else ""
        raise ParamsError(f"{file.path}: no section {name!r} (the {name} stage reads only that section){hint}")
    data = file.data[name]
    if not isinstance(data, dict):
        raise ParamsError(f"{file.where((name,))}: {name}: expected a mapping of keys, got {type(data).__name__}")
    project_fields, trl_fields = section_fields(name)
    problems: list[str] = []
    all_fields = {**project_fields, **trl_fields}
    values = check_mapping(all_fields, data, (name,), file, problems)
    if problems:
        raise ParamsError(problems)
    project = build(PROJECT_PARAMS[name], {k: v for k, v in values.items() if k in project_fields})
    trl = {k: v for k, v in values.items() if k in trl_fields}
    section = Section(name, project, trl, trl_fields, file)
    check(section, for_run=for_run)
    return section
