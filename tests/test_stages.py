"""Declared stages: every notebook is declared, reads come from earlier stages, missing products fail."""

import pytest

from mi_llm import params, runs, stages
from mi_llm.study import figures, runner


def test_every_notebook_is_a_declared_stage_in_order():
    assert [nb.stem for nb in runner.stages()] == list(stages.STAGES)


def test_every_required_read_is_written_by_an_earlier_stage():
    written = set()
    for s in stages.STAGES.values():
        for a in s.reads:
            assert a.optional or a.path in written, (s.name, a.path)
        written |= {a.path for a in s.writes}


def test_figures_read_only_declared_artifacts(tmp_path):
    (tmp_path / "01_corpus_quality").mkdir()
    (tmp_path / stages.QUALITY).write_text("corpus\n")
    (tmp_path / "03_sft/m").mkdir(parents=True)
    (tmp_path / "03_sft/m/train_log.csv").write_text("step,loss\n")
    assert figures.inputs(tmp_path) == [
        tmp_path / stages.QUALITY,
        tmp_path / "03_sft/m/train_log.csv",
    ]


def test_start_stage_hashes_the_declared_reads(tmp_path, monkeypatch):
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path))
    p = params.from_dict({"name": "r"})
    (p.run_dir / "01_corpus_quality").mkdir(parents=True)
    (p.run_dir / stages.QUALITY).write_text("corpus,selected\na,True\n")
    rec = runs.start_stage(p, "02_mi_transcription")
    runs.finish_stage(p, "02_mi_transcription")
    assert list(rec["inputs"]) == [str(p.run_dir / stages.QUALITY)]


def test_missing_product_names_the_file_and_the_stage(tmp_path):
    p = params.from_dict({"name": "r", "sft": {"models": ["a", "b"]}})
    for f in [stages.TRAIN_LOG.format(model="a"), "notebooks/03_sft.ipynb"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    missing = stages.missing_writes("03_sft", tmp_path, p)
    assert tmp_path / "03_sft/b/train_log.csv" in missing
    assert tmp_path / "03_sft/a/train_log.csv" not in missing
    with pytest.raises(stages.MissingProduct, match=r"stage 03_sft .*03_sft/a/adapter"):
        stages.check_writes("03_sft", tmp_path, p)


def test_optional_products_may_be_missing(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks/05_figures.ipynb").write_text("{}")
    stages.check_writes("05_figures", tmp_path)  # no figure, no report: nothing required


def test_unknown_stage_is_an_error():
    with pytest.raises(KeyError, match="declared stages"):
        stages.get("06_extra")
