"""Fixtures are marked by their PROVENANCE, refused unless allowed, and marked wherever corpora are
ranked: quality.csv, the quality figures, the report. The paper's params need the full corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mi_llm import params
from mi_llm.data import corpora, quality
from mi_llm.study import check, figures, report

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = {"psydtcorpus", "soulchatcorpus"}


def _smoke(**corpora_section):
    d = yaml.safe_load((ROOT / "params/smoke.yaml").read_text())
    d["corpora"].update(corpora_section)
    return params.from_dict(d)


def test_provenance_marks_the_two_fixtures_and_no_real_sample():
    smoke = params.load("params/smoke.yaml")
    marked = {n for n, src in smoke.corpora.sources.items() if corpora.is_fixture(params.path(src))}
    assert marked == FIXTURES
    for real in [
        "data/AnnoMI",
        "data/AnnoMI/AnnoMI-simple.csv",
        "data/SmileChat/data/0.json",
        "data/CPsyCounE/Career",
    ]:
        assert not corpora.is_fixture(params.path(real))
    # what the PROVENANCE.md files say in words, the PROVENANCE.json files say as a flag
    for d in (ROOT / "data").iterdir():  # every corpus folder (data/tokenizers holds no corpus)
        if (d / "PROVENANCE.md").exists() and d.name != "tokenizers":
            words = "written for this project" in (d / "PROVENANCE.md").read_text().splitlines()[0]
            assert json.loads((d / "PROVENANCE.json").read_text())["fixture"] is words, d.name


def test_loaders_ignore_a_provenance_file_in_the_corpus_folder(tmp_path):
    src = ROOT / "data/PsyDTCorpus/PsyDTCorpus_sample.json"
    (tmp_path / "a.json").write_bytes(src.read_bytes())
    (tmp_path / "PROVENANCE.json").write_text('{"fixture": true}')
    assert len(corpora.load("psydtcorpus", tmp_path)) == 8
    assert corpora.is_fixture(tmp_path / "a.json")


def test_a_run_refuses_fixtures_unless_allowed():
    with pytest.raises(ValueError, match="allow_fixtures") as e:
        quality.load_corpora(_smoke(allow_fixtures=False))
    msg = str(e.value)
    assert "corpora.sources.psydtcorpus" in msg and "corpora.sources.soulchatcorpus" in msg
    assert "python -m mi_llm data fetch psydtcorpus" in msg
    assert "cpsycound" not in msg  # a real sample is not a fixture
    loaded = quality.load_corpora(_smoke(allow_fixtures=True))
    assert {n for n, (_, rep) in loaded.items() if rep["fixture"]} == FIXTURES


def test_check_refuses_fixtures_unless_allowed():
    errs = corpora.corpus_problems(_smoke(allow_fixtures=False))
    assert [e.split(":")[0] for e in errs] == [
        "corpora.sources.psydtcorpus",
        "corpora.sources.soulchatcorpus",
    ]
    assert corpora.corpus_problems(params.load("params/smoke.yaml")) == []


def test_paper_params_point_at_full_downloads_and_check_says_how_to_get_them(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "set")
    p = params.load("params/paper.yaml")
    assert p.corpora.allow_fixtures is False
    for name, src in p.corpora.sources.items():
        assert src.startswith("data/full/"), name
    if any(params.path(s).exists() for s in p.corpora.sources.values()):
        pytest.skip("full corpora downloaded here")
    errs = check.check("params/paper.yaml")  # what `run params/paper.yaml --check` prints
    assert len(errs) == len(p.corpora.sources)
    for (name, src), err in zip(p.corpora.sources.items(), errs):
        assert err.startswith(f"corpora.sources.{name}: path {src} does not exist")
        assert f"`python -m mi_llm data fetch {name}`" in err


def test_missing_path_names_the_fetch_command_with_its_dest():
    d = yaml.safe_load((ROOT / "params/smoke.yaml").read_text())
    d["corpora"]["sources"] = {
        "annomi": "/nowhere/corpora/annomi",
        "cpsycound": "elsewhere/cpsycound/CPsyCounD/Data",
        "smilechat": "my/own/smile",
    }
    errs = corpora.corpus_problems(params.from_dict(d))
    assert "`python -m mi_llm data fetch annomi --dest /nowhere/corpora`" in errs[0]
    assert "`python -m mi_llm data fetch cpsycound --dest elsewhere`" in errs[1]
    assert "`python -m mi_llm data fetch smilechat`" in errs[2]  # layout unknown: the default


def _ranked():
    loaded = quality.load_corpora(_smoke(allow_fixtures=True))
    stats = quality.describe_all(loaded)
    recs = [
        {"corpus": c, "ok": True, "scores": dict.fromkeys(quality.CRITERIA, 1), "total": 4}
        for c in stats["corpus"]
        for _ in range(2)
    ]
    return quality.rank(stats, recs, top_k=2, bootstrap=50, seed=0)


def test_quality_csv_has_a_fixture_column(tmp_path):
    ranked = _ranked()
    csv, _ = quality.write_artifacts(tmp_path, ranked, [])
    q = pd.read_csv(csv)
    assert dict(zip(q.corpus, q.fixture)) == {c: c in FIXTURES for c in q.corpus}


def test_quality_figures_hatch_fixtures_with_a_legend_entry(tmp_path):
    run = tmp_path / "run"
    quality.write_artifacts(run / "01_corpus_quality", _ranked(), [])
    fig = figures.quality(run)
    for ax in fig.axes:
        if not ax.patches:
            continue
        labels = [t.get_text() for t in ax.get_yticklabels()]
        hatched = {figures.label(c) for c in FIXTURES}
        for bar, lab in zip(ax.patches, labels):
            assert bool(bar.get_hatch()) == (lab in hatched), lab
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any(t.startswith("fixture") for t in legend)
    ax = quality.plot_totals(_ranked())
    hatched = [t.get_text() for bar, t in zip(ax.patches, ax.get_xticklabels()) if bar.get_hatch()]
    assert set(hatched) == FIXTURES
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fixture"]
    # no fixture: no hatch, no legend entry
    plain = _ranked().assign(fixture=False)
    assert not any(b.get_hatch() for b in quality.plot_totals(plain).patches)


def test_report_names_the_fixtures(tmp_path):
    run = tmp_path / "run"
    quality.write_artifacts(run / "01_corpus_quality", _ranked(), [])
    page = report.index_html(run, tmp_path / "report", [], {})
    line = next(x for x in page.splitlines() if "<b>Fixtures:</b>" in x)
    assert all(c in line for c in FIXTURES) and "cpsycound" not in line
