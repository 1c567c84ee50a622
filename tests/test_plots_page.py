"""`dvc plots show` / `dvc plots diff` pages render offline: vega comes from configs/plots/vendor, not a CDN.

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so with no network it is
blank. .dvc/config points DVC at configs/plots/index.html, which loads the copies in the repo by a path
relative to the page (dvc_plots/index.html beside configs/). Each test writes the page in a scratch repo
under tmp_path (with configs/ linked in, where the page looks), never into this one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, dvc_yaml

#: <script src=...> and <link href=...> of a page: what a browser fetches before anything draws.
FETCHED = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def plots_page(tmp_path: Path, *command: str) -> Path:
    """The page `dvc plots <command>` writes in a git + DVC repo holding this repo's dvc.yaml, params.yaml and
    .dvc/config, with every plot's data file made up (the real ones are DVC outs a fresh clone does not have)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "configs").symlink_to(ROOT / "configs")
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=repo, check=True, capture_output=True)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    _plot_data(repo, step=0)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "plots"], check=True, capture_output=True)
    _plot_data(repo, step=1)  # the workspace differs from HEAD: what `dvc plots diff` compares
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", *command, "-o", "dvc_plots"],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "failed to load" not in result.stderr + result.stdout, result.stderr
    return repo / "dvc_plots" / "index.html"


def _plot_data(repo: Path, step: int) -> None:
    """A small data file for every plot of dvc.yaml: a step curve per TSV, a row per model per CSV."""
    tables: dict[Path, dict[str, str]] = {}
    for plot in dvc_yaml()["plots"]:
        (plot_id, spec), = plot.items()
        ys = spec["y"] if isinstance(spec["y"], dict) else {f"{plot_id}/sft.csv": spec["y"]}
        for file, column in ys.items():
            tables.setdefault(repo / file, {spec["x"]: "", column: ""})[spec["x"]] = ""
    for path, columns in tables.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        sep = "\t" if path.suffix == ".tsv" else ","
        rows = [[str(i + step) if c == "step" else "sft" if c == "model" else str(0.1 * (i + 1))
                 for c in columns] for i in range(3)]
        path.write_text("\n".join(sep.join(r) for r in [list(columns), *rows]) + "\n")


@pytest.mark.parametrize("command", [("show",), ("diff",)])
def test_the_plots_page_fetches_only_files_of_the_repo(tmp_path: Path, command: tuple[str, ...]):
    page = plots_page(tmp_path, *command)
    html = page.read_text()
    fetched = FETCHED.findall(html)
    assert fetched, "the page loads no scripts: DVC did not use configs/plots/index.html"
    remote = [src for src in fetched if re.match(r"(?i)(https?:)?//", src)]
    assert not remote, f"the page fetches from the network: {remote}"
    for src in fetched:
        assert (page.parent / src).resolve().is_file(), f"{src}: not found from {page}"
    assert {Path(src).name for src in fetched} == {"vega.min.js", "vega-lite.min.js", "vega-embed.min.js"}
    assert html.count("vegaEmbed(") >= len(dvc_yaml()["plots"])  # a folder of files gives one plot per file


def test_the_plots_page_draws_every_plot_in_a_browser_with_no_network(tmp_path: Path):
    """Chromium, headless, on the page as written: each plot's div gets vega-embed's chart (a canvas)."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the page's script sources are "
                    "checked by the test above, not its drawing")
    page = plots_page(tmp_path, "show")
    # the network is refused outright, so a chart can only come from the repo's files
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--proxy-server=127.0.0.1:9", "--user-data-dir=" + str(tmp_path / "profile"),
                             "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=180)
    dom = result.stdout
    assert "<body" in dom, result.stderr[-2000:]
    # vega-embed replaces each plot div's script with the chart: a canvas (or svg) of class "marks"
    charts = re.split(r'<div id="[^"]+" class="vega-embed', dom)[1:]
    drawn = [c for c in charts if re.search(r'<(canvas|svg)\b[^>]*\bwidth="[1-9][^>]*class="marks"', c)]
    plots = page.read_text().count("vegaEmbed(")
    assert len(charts) == len(drawn) == plots, f"{len(drawn)} of {plots} plots drawn"
