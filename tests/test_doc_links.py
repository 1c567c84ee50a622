"""Every relative link of the pages a user reads resolves, and those pages speak of the product, not of its history.

A page moved or renamed under docs/ leaves links to it behind; a reader who follows one meets a 404 on
GitHub or nothing in an editor. Links are read as Markdown writes them, `[text](target)`: a target with a
scheme (https:, mailto:) or only an anchor (#...) is not a file and is left alone; any other target,
its anchor dropped, must name a file or folder of the repo, relative to the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_readme_commands import DOCS, prose

#: [text](target): the target up to the first space or closing parenthesis (a title after it is ignored).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def relative_links(text: str) -> list[str]:
    """The targets of a page's links that point into the repo (code spans and fenced blocks are not links)."""
    outside_code = re.sub(r"`[^`\n]*`", "", prose(text))
    return [t for t in LINK.findall(outside_code) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_link_reader_finds_relative_links_only():
    text = ("See [eval](docs/eval.md#greedy-eval), [TRL](https://github.com/huggingface/trl), [top](#set-up),\n"
            "`[not](a-link.md)` and\n```\n[nor](this.md)\n```\n[a folder](reports/ \"title\").")
    assert relative_links(text) == ["docs/eval.md#greedy-eval", "reports/"]


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves(doc: str):
    page = ROOT / doc
    broken = [target for target in relative_links(page.read_text())
              if not (page.parent / target.split("#", 1)[0]).resolve().exists()]
    assert not broken, f"{doc}: links to nothing: {', '.join(broken)}"


def test_every_page_under_docs_is_reachable_from_the_readme():
    """A page no link reaches is a page nobody reads: follow links from README.md through docs/."""
    seen: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.is_file():
            continue
        seen.add(page)
        todo += [(page.parent / t.split("#", 1)[0]).resolve() for t in relative_links(page.read_text())]
    unreached = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if p.resolve() not in seen)
    assert not unreached, f"no link from README.md leads to: {', '.join(unreached)}"


#: Words that narrate how the project was written rather than what it is.
HISTORY_WORDS = re.compile(r"this session|\bsession's|issue [0-9]+|\bwithdrawn\b|until this|the next sweep to run",
                           re.IGNORECASE)


@pytest.mark.parametrize("doc", DOCS)
def test_user_pages_speak_of_the_product_not_its_history(doc: str):
    found = [f"{doc}:{n}: {line.strip()}" for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1)
             if HISTORY_WORDS.search(line)]
    assert not found, "development history in a user page:\n" + "\n".join(found)
