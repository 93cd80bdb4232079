"""Stage 05 figures: every figure from a run's artifacts (real formats, small hand-made tables)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import write_artifacts

matplotlib.use("Agg")

from mi_llm.eval import forecast_eval
from mi_llm.params import FiguresParams
from mi_llm.study import figures


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """All figures made once from the artifact set: (run dir, out dir, overview)."""
    root = tmp_path_factory.mktemp("figs")
    run = write_artifacts(root / "run")
    figures.style()
    fp = FiguresParams(out_dir=str(root / "figures"), dpi=72)  # low dpi: same code, faster tests
    return run, root / "figures", figures.make_all(run, fp)


def test_every_figure_is_written_as_png_pdf_with_its_tables(made):
    run, out, overview = made
    assert overview.made.all(), overview
    for name in figures.FIGURES:
        for d in (out, run / "05_figures"):
            assert (d / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (d / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
            assert len(pd.read_csv(d / "tables" / f"{name}.csv")) > 0
            assert (d / "tables" / f"{name}.md").read_text().startswith("| ")


def test_tables_carry_the_artifacts_numbers(made):
    run, _, _ = made
    q = figures.table("corpus_quality", run)
    top = q[(q.corpus == "cpsycound") & (q.metric == "total")].iloc[0]
    assert (top.value, top.ci_low, top.ci_high, top.selected) == (8.0, 7.0, 9.0, True)
    comp = q[(q.corpus == "cpsycound") & (q.metric == "comprehensiveness")].iloc[0]
    assert (comp.value, comp.ci_low, comp.ci_high) == (1.5, 1.0, 2.0)  # bootstrapped judgements
    prof = q[(q.corpus == "psydtcorpus") & (q.metric == "professionalism")].iloc[0]
    assert (prof.ci_low, prof.ci_high) == (2.0, 2.0)  # the failed judgement is left out
    t = figures.table("transcription", run)
    assert dict(zip(t.outcome, t["count"])) == {
        "valid": 7,
        "failed: too short": 2,
        "failed: speakers do not alternate": 1,
    }
    tm = figures.table("text_metrics", run)
    assert set(tm.metric) == {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"}
    real = pd.read_csv(run / "04_evaluation/metrics.csv").set_index("variant")
    row = tm[(tm.variant == "finetuned") & (tm.metric == "BLEU-4")].iloc[0]
    assert (row.value, row.ci_low) == pytest.approx(
        (real.bleu4["finetuned"], real.bleu4_ci_low["finetuned"])
    )
    th = figures.table("therapy_metrics", run)
    assert set(th.metric) == set(figures.THERAPY) and set(th.category) == {"婚恋", "家庭", "all"}
    base_q = th[(th.variant == "base") & (th.metric == "question_marks") & (th.category == "all")]
    assert base_q.value.tolist() == [4 / base_q.n.iloc[0]]  # four question marks, per reply
    summary = figures.table("miti_summary", run)
    m = summary[summary.definition == "pooled"].set_index(["source", "metric"])
    # ids with their n's: dialogues and utterances
    ft = "gemma3-270m · finetuned (2 dialogues, 8 utterances)"
    hi = "annomi · high (2 dialogues, 10 utterances)"
    assert m.value[(ft, "pct_cr")] == 25 and m.value[(hi, "r_q")] == 2
    assert m.ci_low[(ft, "r_q")] <= m.value[(ft, "r_q")] <= m.ci_high[(ft, "r_q")]
    assert math.isnan(m.value[(ft, "pct_mi_adherent")])  # no MIA nor MINA: 0/0
    per = summary[summary.definition == "per_conversation"].set_index(["source", "metric"]).value
    assert per[(ft, "r_q")] == pytest.approx((3 / 2 + 1 / 2) / 2)  # mean over conversations
    assert summary.groupby("source").reference.first().to_dict() == {hi: True, ft: False}
    c = figures.table("miti_codes", run)
    by = {s: g.set_index("code")["share"].to_dict() for s, g in c.groupby("source")}
    # base: 3 coded utterances (the null one left out), two questions and one information
    assert by["gemma3-270m · base (n=3)"] == pytest.approx(
        {"Question": 2 / 3, "Giving Information": 1 / 3}
    )
    # finetuned: 5 utterances, one code each
    assert by["gemma3-270m · finetuned (n=5)"] == pytest.approx(
        {
            "Simple Reflection": 1 / 5,
            "Question": 2 / 5,
            "Complex Reflection": 1 / 5,
            "no behaviour": 1 / 5,
        }
    )
    # real MI: AnnoMI's human codes from the summary, not the coder-check sample; the codes AnnoMI
    # does not annotate are NaN ("n/a"), never 0
    human = by["annomi · high (human codes) (n=10)"]
    annotated = {"Question": 0.2, "Simple Reflection": 0.2, "Complex Reflection": 0.2}
    assert {k: human[k] for k in annotated} == pytest.approx(annotated)
    assert human["Giving Information"] == pytest.approx(0.1)
    assert all(
        math.isnan(v) for k, v in human.items() if k not in annotated | {"Giving Information": 0}
    )
    assert c.reference.iloc[-1] and c.reference.sum() == len(figures.CODES)
    f = figures.table("forecaster", run)
    assert list(dict.fromkeys(f.metric)) == forecast_eval.FORECASTER_METRICS  # n_* are counts
    assert figures.table("training_loss", run).model.unique().tolist() == ["gemma3-270m", "tiny"]


def test_same_artifacts_give_identical_files(made, tmp_path):
    run, out, _ = made
    for name in ("transcription", "training_loss"):
        (run / "05_figures" / figures.KEYS / name).unlink()  # drawn and saved again
        figures.make(name, run, FiguresParams(out_dir=str(tmp_path), dpi=72))
        for fmt in ("png", "pdf"):
            assert (tmp_path / f"{name}.{fmt}").read_bytes() == (out / f"{name}.{fmt}").read_bytes()


def test_a_figure_is_saved_again_only_when_what_it_shows_changed(made, tmp_path):
    """A re-run's figures whose table, artifacts, code and settings are unchanged are not saved
    again (PDF font subsetting is the slow part of stage 05); any change saves them."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(made[0], run)
    fp = FiguresParams(out_dir=str(tmp_path / "figures"), dpi=72)
    png = run / "05_figures" / "training_loss.png"

    def saved_again(**kw) -> bool:
        png.write_bytes(b"marker")  # what a skipped save leaves in place
        figures.make("training_loss", run, FiguresParams(**{**vars(fp), **kw}))
        return png.read_bytes() != b"marker"

    figures.make("training_loss", run, fp)
    assert not saved_again()
    assert saved_again(dpi=80)  # other settings
    log = run / "03_sft" / "tiny" / "train_log.csv"
    log.write_text(log.read_text().replace("\n1,", "\n1,9", 1))  # another artifact
    assert saved_again(dpi=80)
    (run / "05_figures" / "training_loss.pdf").unlink()  # a file is missing
    assert saved_again(dpi=80)
    assert (tmp_path / "figures" / "training_loss.png").read_bytes() == png.read_bytes()


def test_missing_artifact_is_skipped_with_its_file_named(made, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "05_figures").mkdir(parents=True)
    (run / "05_figures/miti_codes.png").write_bytes(b"stale figure of an earlier run")
    fig = figures.make("miti_codes", run, FiguresParams(out_dir=str(tmp_path / "figures")))
    assert fig is None
    assert "04_evaluation/miti_codes.jsonl is missing" in capsys.readouterr().out
    assert not (run / "05_figures/miti_codes.png").exists()
    assert not (tmp_path / "figures").exists()
    assert not figures.saved(run).made.any()


def test_chinese_labels_become_pinyin_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(figures, "_cjk_font", None)
    assert figures.label("婚恋 (n=3)") == "Hun Lian (n=3)"
    assert figures.label("cpsycound") == "CPsyCounD"
    monkeypatch.setattr(figures, "_cjk_font", "WenQuanYi Micro Hei")
    assert figures.label("婚恋") == "婚恋"


def test_markdown_table_escapes_and_rounds():
    md = figures.to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.23456]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.23 |"]


def test_miti_summary_colours_the_papers_three_models_by_three_variants(tmp_path):
    """Nine generated sources (3 models x 3 variants, as in paper.yaml) beside AnnoMI."""
    from mi_llm.eval import miti

    e = tmp_path / "04_evaluation"
    e.mkdir()
    cis = {f"{s}_{e}": np.nan for s in miti.SCORES for e in ("ci_low", "ci_high")}
    rows = [
        {
            "group": "generated",
            "model": m,
            "variant": v,
            "definition": "pooled",
            "n_coded": 4,
            "n_dialogues": 1,
            "n_utterances": 4,
            **cis,
            **miti.summary_scores({"Q": 2, "CR": i + 1}),
        }
        for i, (m, v) in enumerate(
            (m, v)
            for m in ["baichuan2-7b-chat", "glm-4-9b-chat", "llama3"]
            for v in ["base", "finetuned", "conditioned"]
        )
    ]
    rows.append(
        {
            "group": "reference",
            "model": "annomi",
            "variant": "high",
            "definition": "pooled",
            "n_coded": 4,
            "n_dialogues": 1,
            "n_utterances": 4,
            **cis,
            **miti.summary_scores({"Q": 2, "SR": 2}),
        }
    )
    pd.DataFrame(rows).to_csv(e / "miti_summary.csv", index=False)
    fig = figures.miti_summary(tmp_path)
    assert len(figures.miti_summary_table(tmp_path).source.unique()) == 10
    assert len(fig.axes[0].get_yticklabels()) == 10  # every source drawn


def _texts(ax) -> list[str]:
    """The panel's notes as one line each (they are drawn on two lines to fit a narrow panel)."""
    return [t.get_text().replace(":\n", ": ") for t in ax.texts]


def test_empty_panels_say_what_is_missing_and_small_cis_are_marked(tmp_path):
    """MITI panels without globals or MI-adherence codes say so instead of empty axes, a source
    over fewer than 5 dialogues is marked too small to read, the name-use panel without a known
    name says "not rated"; a source over enough dialogues is not marked."""
    from mi_llm.eval import metrics, miti

    e = tmp_path / "04_evaluation"
    e.mkdir()
    cis = {f"{s}_{e}": 1.0 for s in miti.SCORES for e in ("ci_low", "ci_high")}
    row = {"definition": "pooled", "n_coded": 4, "n_utterances": 4, **cis}
    scores = miti.summary_scores({"Q": 2, "CR": 2})
    assert math.isnan(scores["technical"]) and math.isnan(scores["pct_mi_adherent"])
    rows = [
        {**row, **scores, "group": "generated", "model": "m", "variant": "base", "n_dialogues": n}
        for n in (2, 6)
    ]
    rows[1]["variant"] = "finetuned"
    pd.DataFrame(rows).to_csv(e / "miti_summary.csv", index=False)
    t = figures.miti_summary_table(tmp_path)
    assert t.groupby("source").too_small.first().tolist() == [True, False]
    fig = figures.miti_summary(tmp_path)
    panels = {ax.get_title(): _texts(ax) for ax in fig.axes}
    assert panels["Technical global"] == ["not rated: no MITI global ratings"]
    assert panels["Relational global"] == ["not rated: no MITI global ratings"]
    assert panels["% MI-adherent"] == ["not annotated: no MI-adherent / non-adherent codes"]
    assert (
        panels["% complex reflections"]
        == [metrics.TOO_SMALL]
        == ["n < 5 dialogues: too small to read"]
    )
    rows[0]["n_dialogues"] = 5
    pd.DataFrame(rows).to_csv(e / "miti_summary.csv", index=False)
    fig = figures.miti_summary(tmp_path)
    assert {ax.get_title(): _texts(ax) for ax in fig.axes}["% complex reflections"] == []

    therapy = pd.DataFrame(
        {
            "model": "m",
            "variant": ["base", "finetuned"] * 2,
            "category": "all",
            "n": 8,
            "n_dialogues": 8,
            "too_small": False,
            "metric": ["name_mismatch"] * 2 + ["question_replies"] * 2,
            "value": [np.nan, np.nan, 0.5, 0.25],
            "ci_low": [np.nan, np.nan, 0.4, 0.1],
            "ci_high": [np.nan, np.nan, 0.6, 0.4],
        }
    )
    fig = figures.therapy_metrics(tmp_path, table=therapy)
    assert [_texts(ax) for ax in fig.axes] == [
        ["not rated: no round has a known client name"],
        [],
    ]


def test_quality_figure_says_a_selection_among_equal_totals_is_a_tie(tmp_path):
    from mi_llm.data.quality import CRITERIA

    rows = [
        {
            "corpus": c,
            "rank": i + 1,
            "selected": i < 2,
            "fixture": False,
            "judged": True,
            "metric": m,
            "value": 5.0 if m == "total" else 1.0,
            "ci_low": np.nan,
            "ci_high": np.nan,
        }
        for i, c in enumerate(["a", "b", "c"])
        for m in [*CRITERIA, "total"]
    ]
    t = pd.DataFrame(rows)
    note = figures.quality(tmp_path, table=t).get_supxlabel()
    assert note.replace("\n", " ") == (
        "a, b, c tie at total 5: a, b selected by the tie-break (higher total_ci_low, then more "
        "dialogues, then the name), not by a better score."
    )
    t.loc[(t.corpus == "c") & (t.metric == "total"), "value"] = 4.0
    assert figures.quality(tmp_path, table=t).get_supxlabel() == ""
