"""The run report: executed notebooks as HTML, figures and provenance, checked in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import matplotlib
import matplotlib.image
import nbformat
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from conftest import write_artifacts

from mi_llm import params, runs, stages
from mi_llm.study import figures, report, smoke

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
    for rel, n in ((stages.TRAIN, 3), (stages.TEST, 2)):  # stage 02's split: the note's n
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("".join(json.dumps({"id": f"d{i}"}) + "\n" for i in range(n)))
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


def test_a_smoke_run_says_so_at_the_top_and_on_every_figure(built):
    run, index = built
    page = index.read_text()
    note = smoke.note(run)
    assert note.startswith("smoke run: 270M model, n = ")
    assert note.endswith("the numbers test the pipeline, not the method")
    assert "n = 3 train / 2 test dialogues" in note
    banner = page.index('class="smoke"')
    assert banner < page.index("<h2>Provenance</h2>")  # the first screen
    fig = figures.make("transcription", run, params.FiguresParams(out_dir=str(run / "f"), dpi=72))
    assert note in [t.get_text() for t in fig.texts]  # and so on every figure: make() adds it
    assert "(smoke run)</title>" in page and "gemma3-270m (embedded, in process)" in page


def test_no_smoke_note_for_a_run_of_the_paper_models(built, tmp_path):
    run, _ = built
    other = tmp_path / "run"
    shutil.copytree(run, other)
    prov = json.loads((other / "provenance.json").read_text())
    prov["params"]["llm"].update(provider="remote", model="gpt-4o")
    for section in ("sft", "evaluation"):
        prov["params"][section]["models"] = ["glm-4-9b-chat"]
    (other / "provenance.json").write_text(json.dumps(prov))
    assert smoke.note(other) is None
    prov["params"]["llm"].update(provider="embedded", model="gemma3-270m")  # the judge alone
    (other / "provenance.json").write_text(json.dumps(prov))
    assert smoke.note(other).startswith("smoke run: 270M model")
    page = report.build(other).read_text()
    assert 'class="smoke"' in page


def test_the_stages_table_is_complete(built):
    run, index = built
    page = index.read_text()
    for stage in stages.STAGES:
        assert f">{stage}<" in page, stage
    assert "not run" in page
    prov = json.loads((run / "provenance.json").read_text())
    prov["stages"]["05_figures"] = {"started": "2026-01-01T00:00:00+00:00", "finished": None}
    html_ = report._stages_html(prov, [], building="05_figures")
    assert "finishing: this report is its last step" in html_
    assert "not finished" not in html_


def test_captions_claim_cis_only_where_computed():
    doc = (
        "(a) Rubric score per criterion and total per corpus, 95% CIs, selected corpora in colour."
    )
    none = pd.DataFrame({"ci_low": [np.nan, np.nan], "ci_high": [np.nan, np.nan]})
    some = pd.DataFrame({"ci_low": [0.1, np.nan], "ci_high": [0.2, np.nan]})
    every = pd.DataFrame({"ci_low": [0.1, 0.3], "ci_high": [0.2, 0.4]})
    assert "95%" not in report._caption(doc, none)
    assert "no confidence interval was computed" in report._caption(doc, none)
    assert "95% CIs where computed" in report._caption(doc, some)
    assert report._caption(doc, every) == doc


def test_every_notebook_image_has_alternative_text(built, caplog):
    run, _ = built
    nb_html = (run / "report/notebooks/01_tiny.html").read_text()
    imgs = re.findall(r"<img[^>]*>", nb_html)
    assert imgs and all('alt="' in i for i in imgs)
    assert "No description has been provided" not in nb_html
    assert "01_tiny, cell 1: a figure drawn by" in nb_html
