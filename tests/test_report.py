"""The run report: executed notebooks as HTML, figures and provenance, checked in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib
import matplotlib.image
import nbformat
import pytest

matplotlib.use("Agg")

from conftest import write_artifacts

from mi_llm import params, runs
from mi_llm.study import figures, report

MADE = ["corpus_quality", "transcription", "miti_codes"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _executed_notebook(path):
    """Execute a tiny two-cell notebook (markdown + a plot) with nbclient, as papermill would."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# 01 tiny stage\nA tiny executed notebook."),
            nbformat.v4.new_code_cell(
                "import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 1.5))\n"
                "plt.plot([0, 1, 2], [2, 0, 1])\nprint('plotted in the kernel')"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A run with artifacts (forecaster missing), 3 figures, one executed notebook, provenance."""
    root = tmp_path_factory.mktemp("report")
    run = write_artifacts(root / "run")
    (run / "04_evaluation/forecaster.csv").unlink()  # a stage part not run: listed as not made
    _executed_notebook(run / "notebooks/01_tiny.ipynb")
    p = params.Params(name="run")
    mp = pytest.MonkeyPatch()
    mp.setattr(runs, "provenance_path", lambda _: run / "provenance.json")
    runs.start_stage(p, "01_tiny", inputs=[run / "01_corpus_quality"])
    runs.finish_stage(p, "01_tiny", outputs=[run / "notebooks"])
    mp.undo()
    figures.style()
    fp = params.FiguresParams(out_dir=str(root / "figures"), dpi=72)
    for name in [*MADE, "forecaster"]:  # the others stay unmade: drawing them is test_figures' job
        figures.make(name, run, fp)
    return run, report.build(run)


def test_index_links_stages_figures_and_provenance(built):
    run, index = built
    assert index == run / "report/index.html"
    page = index.read_text()
    assert report.broken_links(index) == []
    assert 'href="notebooks/01_tiny.html"' in page
    for name in figures.FIGURES:
        if name in MADE:
            assert (
                f'src="figures/{name}.png"' in page and f'href="figures/tables/{name}.csv"' in page
            )
        else:
            assert re.search(f"Not made in this run.*{name}", page)
            assert f"figures/{name}.png" not in page
    assert (run / "report/provenance.json").read_text() == (run / "provenance.json").read_text()
    commit = runs.git_commit()["commit"]
    assert (commit or "none (not a git checkout)") in page
    assert re.search(
        r"01_tiny</a></td><td>[0-9T:+-]+</td><td>[0-9T:+-]+</td><td>[0-9.]+</td>", page
    )
    nb_html = (run / "report/notebooks/01_tiny.html").read_text()
    assert "plotted in the kernel" in nb_html and "data:image/png;base64," in nb_html
    assert report.broken_links(run / "report/notebooks/01_tiny.html") == []


def test_rebuild_drops_figures_no_longer_made(built, tmp_path):
    run, _ = built
    shutil.copytree(run, tmp_path / "run")
    (tmp_path / "run/04_evaluation/miti_codes.jsonl").unlink()
    figures.make(
        "miti_codes", tmp_path / "run", params.FiguresParams(out_dir=str(tmp_path / "figures"))
    )
    index = report.build(tmp_path / "run")
    assert not (index.parent / "figures/miti_codes.png").exists()
    assert "figures/miti_codes.png" not in index.read_text()


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "there.png").write_bytes(b"\x89PNG")
    (tmp_path / "a.html").write_text(
        '<p id="top"></p><img src="there.png"><img src="gone.png"><a href="#top">ok</a>'
        '<a href="#nowhere">x</a><a href="https://example.org/x.png">ext</a>'
        '<a href="sub/page.html#top">y</a>'
    )
    assert report.broken_links(tmp_path / "a.html") == ["gone.png", "#nowhere", "sub/page.html#top"]


def _chromium(*args, profile):
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(built, tmp_path):
    run, index = built
    url = index.resolve().as_uri()
    dom = _chromium(
        "--virtual-time-budget=10000", "--dump-dom", url, profile=tmp_path / "p1"
    ).stdout
    n_figures = len(list((run / "report/figures").glob("*.png")))
    assert n_figures == len(MADE)
    # the page's own load-time check: every <img> decoded (naturalWidth > 0)
    assert f'data-broken="0">all {n_figures} images loaded' in dom, dom[-2000:]
    for target in re.findall(r'(?:href|src)="([^"#:]+)"', dom):
        assert (index.parent / target).exists(), target
    shot = tmp_path / "index.png"
    _chromium("--window-size=1200,1600", f"--screenshot={shot}", url, profile=tmp_path / "p2")
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1600, 1200) and img.std() > 0.05  # not a blank page
    nb_dom = _chromium(
        "--virtual-time-budget=10000",
        "--dump-dom",
        (run / "report/notebooks/01_tiny.html").resolve().as_uri(),
        profile=tmp_path / "p3",
    ).stdout
    assert "plotted in the kernel" in nb_dom
