"""Stage 05 figures: every figure from a run's artifacts (real formats, small hand-made tables)."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from mi_llm import figures, forecast
from mi_llm.params import FiguresParams

CRIT = ["comprehensiveness", "professionalism", "authenticity", "safety"]
JUDGED = {  # corpus -> rubric scores of its judged dialogues (None: the judge's answer failed)
    "cpsycound": [[2, 3, 3, 1], [1, 2, 3, 1]],
    "psydtcorpus": [[2, 2, 2, 1], [1, 2, 2, 1], None],
    "smilechat": [[1, 2, 2, 1], [1, 1, 2, 0]],
    "cpsycoune": [[1, 1, 2, 1], [0, 1, 1, 1]],
}
REPLIES = [  # (topic, round, reference, base reply, finetuned reply): stage 04's generations
    ("婚恋", 0, "听起来你很在意这段关系。", "你应该和他谈谈吧？你试过吗？", "你很在意这段关系。"),
    ("婚恋", 1, "你希望他更理解你。", "为什么不分手？", "你希望被理解。"),
    ("家庭", 0, "和父母的争吵让你很累。", "你父母怎么说？", "争吵让你很累，是吗？"),
    ("家庭", 1, "你想找到一种平静的沟通方式。", "多沟通就好了。", "你想平静地沟通。"),
]


def _generations():
    return [
        {
            "model": "gemma3-270m",
            "variant": v,
            "dialogue_id": f"d-{topic}",
            "round": r,
            "topic": topic,
            "messages": [{"role": "user", "content": "我最近很烦。"}],
            "reference": ref,
            "reply": base if v == "base" else ft,
        }
        for topic, r, ref, base, ft in REPLIES
        for v in ("base", "finetuned")
    ]


def write_artifacts(run):
    """A small but complete run: stages 01-04's artifacts in their real formats (04's tables are
    computed by mi_llm.metrics / mi_llm.therapy / mi_llm.miti from hand-made generations)."""
    from mi_llm import metrics, miti, quality, therapy

    q = run / "01_corpus_quality"
    q.mkdir(parents=True)
    rows, recs = [], []
    for c, judged in JUDGED.items():
        recs += [
            {
                "corpus": c,
                "dialogue_id": f"{c}-{i}",
                "ok": s is not None,
                "scores": dict(zip(CRIT, s)) if s else None,
                "total": sum(s) if s else None,
            }
            for i, s in enumerate(judged)
        ]
        ok = [s for s in judged if s]
        means = dict(zip(CRIT, [sum(x[k] for x in ok) / len(ok) for k in range(4)]))
        tot = sum(means.values())
        rows.append(
            {
                "corpus": c,
                "n_dialogues": 10,
                "mean_turns": 12.0,
                "mean_counselor_chars": 30.0,
                "mean_client_chars": 20.0,
                "question_rate": 0.3,
                "duplicate_rate": 0.0,
                **means,
                "total": tot,
                "total_ci_low": tot - 1,
                "total_ci_high": min(tot + 1, 9),
            }
        )
    df = pd.DataFrame(rows).sort_values("total", ascending=False)
    df["rank"], df["selected"] = range(1, len(df) + 1), [True, True, False, False]
    df[quality.FIXTURE_COLUMN] = False
    df.to_csv(q / "quality.csv", index=False)  # quality.QUALITY_COLUMNS, then the fixture flag
    (q / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "02_mi_transcription").mkdir()
    (run / "02_mi_transcription/report.json").write_text(
        json.dumps(
            {
                "unit": "turn",
                "attempted": 10,
                "valid": 7,
                "failed_by_reason": {"too short": 2, "speakers do not alternate": 1},
                "by_corpus": {"cpsycound": {"attempted": 5, "valid": 4}},
            }
        )
    )
    for m, l0 in [("gemma3-270m", 4.5), ("tiny", 6.0)]:
        (run / "03_sft" / m).mkdir(parents=True)
        log = {
            "step": range(1, 6),
            "loss": [l0 * 0.8**i for i in range(5)],
            "learning_rate": 2e-4,
            "tokens_per_s": 50.0,
        }
        pd.DataFrame(log).to_csv(run / "03_sft" / m / "train_log.csv", index=False)
    e = run / "04_evaluation"
    e.mkdir()
    gens = _generations()
    metrics.score(gens, bootstrap=200).to_csv(e / "metrics.csv", index=False)
    therapy.therapy_metrics(gens).to_csv(e / "therapy_metrics.csv", index=False)
    summary = [
        {
            "group": "generated",
            "model": "gemma3-270m",
            "variant": "finetuned",
            **miti.summary_scores(
                {"Q": 4, "SR": 3, "CR": 1}, {"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 3}, 8
            ),
            "n_coded": 8,
        },
        {
            "group": "reference",
            "model": "annomi",
            "variant": "high",
            **miti.summary_scores({"Q": 2, "SR": 2, "CR": 2}, None, 10),
            "n_coded": 10,
            "Q": 2,
            "SR": 2,
            "CR": 2,
            "GI": 1,
            "AF": np.nan,
        },
    ]
    pd.DataFrame(summary).to_csv(e / "miti_summary.csv", index=False)
    units = [
        {
            "model": "gemma3-270m",
            "variant": v,
            "dialogue_id": "d0",
            "topic": "婚恋",
            "utterances": [{"turn": i, "round": i, "codes": c} for i, c in enumerate(codes)],
        }
        for v, codes in [
            ("base", [["Q"], ["Q"], ["GI"], None]),
            ("finetuned", [["SR"], ["Q", "CR"], ["Q"], []]),
        ]
    ]
    units.append(  # a coder-check record: not real MI, not drawn
        {"model": "annomi", "variant": "high", "check": "annomi", "utterances": [{"codes": ["CR"]}]}
    )
    (e / "miti_codes.jsonl").write_text(
        "".join(json.dumps(u, ensure_ascii=False) + "\n" for u in units)
    )
    rng = np.random.default_rng(0)  # forecast.evaluate's table: forecast.score per predictor
    y = list(rng.choice(forecast.TAGS, 60))
    groups = [f"rec{i // 6}" for i in range(60)]
    preds = {
        "majority": ("baseline", [y[0]] * 60),
        "previous_behaviour": ("baseline", list(rng.permutation(y))),
        "forecaster_universal": ("forecaster", y[:40] + [y[0]] * 20),
    }
    rows = [
        {
            "model": m,
            "role": role,
            "features": "none" if role == "baseline" else "language-independent",
            "n_train": 900,
            "n_train_sessions": 40,
            "n_train_recordings": 30,
            "n_test_transcripts": 10,
            "reference": "previous_behaviour",
            **forecast.score(y, p, groups, 100, 0, reference=preds["previous_behaviour"][1]),
        }
        for m, (role, p) in preds.items()
    ]
    df = pd.DataFrame(rows)
    df["beats_baselines"] = forecast.beats_baselines(df)
    forecast.write_table(df, e)
    return run


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
    assert base_q.value.tolist() == [4]  # the base replies above hold four question marks
    m = figures.table("miti_summary", run).set_index(["source", "metric"]).value
    ft, hi = "gemma3-270m · finetuned (n=8)", "annomi · high (n=10)"  # ids, n coded utterances
    assert m[(ft, "pct_cr")] == 25 and m[(hi, "r_q")] == 2
    assert math.isnan(m[(ft, "pct_mi_adherent")])  # no MIA nor MINA: 0/0
    assert figures.table("miti_summary", run).groupby("source").reference.first().to_dict() == {
        hi: True,
        ft: False,
    }
    c = figures.table("miti_codes", run)
    by = {s: g.set_index("code")["share"].to_dict() for s, g in c.groupby("source")}
    # base: 3 coded utterances (the null one left out), two questions and one information
    assert by["gemma3-270m · base (n=3)"] == pytest.approx(
        {"Question": 2 / 3, "Giving Information": 1 / 3}
    )
    # finetuned: 4 utterances, one holding a question and a complex reflection (both count)
    assert by["gemma3-270m · finetuned (n=4)"] == pytest.approx(
        {
            "Simple Reflection": 1 / 4,
            "Question": 2 / 4,
            "Complex Reflection": 1 / 4,
            "no behaviour": 1 / 4,
        }
    )
    # real MI: AnnoMI's human codes from the summary, not the coder-check sample
    assert by["annomi · high (human codes) (n=10)"] == pytest.approx(
        {
            "Question": 0.2,
            "Simple Reflection": 0.2,
            "Complex Reflection": 0.2,
            "Giving Information": 0.1,
        }
    )
    assert c.reference.iloc[-1] and c.reference.sum() == 4
    f = figures.table("forecaster", run)
    assert list(dict.fromkeys(f.metric)) == forecast.FORECASTER_METRICS  # n_* are counts
    assert figures.table("training_loss", run).model.unique().tolist() == ["gemma3-270m", "tiny"]


def test_same_artifacts_give_identical_files(made, tmp_path):
    run, out, _ = made
    for name in ("transcription", "training_loss"):
        figures.make(name, run, FiguresParams(out_dir=str(tmp_path), dpi=72))
        for fmt in ("png", "pdf"):
            assert (tmp_path / f"{name}.{fmt}").read_bytes() == (out / f"{name}.{fmt}").read_bytes()


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


def test_bad_artifacts_raise_naming_file_and_record(tmp_path):
    (tmp_path / "02_mi_transcription").mkdir()
    (tmp_path / "02_mi_transcription/report.json").write_text('{"n_requests": 3}')
    with pytest.raises(ValueError, match=r"report\.json: .*field 'valid': missing"):
        figures.transcription_table(tmp_path)
    (tmp_path / "04_evaluation").mkdir()
    (tmp_path / "04_evaluation/miti_codes.jsonl").write_text(
        '{"utterances": [{"codes": ["Q"]}]}\n{"code": "Q"}\n'
    )  # the one schema mi_llm.miti writes: "utterances", nothing else
    with pytest.raises(
        ValueError, match=r"miti_codes\.jsonl: record 1: field 'utterances' missing"
    ):
        figures.miti_codes_table(tmp_path)
    (tmp_path / "04_evaluation/miti_summary.csv").write_text(
        "group,model,variant,n_coded,tech\ngenerated,m,base,3,4\n"
    )
    with pytest.raises(ValueError, match=r"miti_summary\.csv: column 'technical' missing"):
        figures.miti_summary_table(tmp_path)


def test_chinese_labels_become_pinyin_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(figures, "_cjk_font", None)
    assert figures.label("婚恋 (n=3)") == "Hun Lian (n=3)"
    assert figures.label("cpsycound") == "CPsyCounD"
    monkeypatch.setattr(figures, "_cjk_font", "WenQuanYi Micro Hei")
    assert figures.label("婚恋") == "婚恋"


def test_markdown_table_escapes_and_rounds():
    md = figures.to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.23456]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.23 |"]


def test_text_metrics_table_names_the_content_scores_beside_the_raw_ones(tmp_path):
    from mi_llm import metrics

    (tmp_path / "04_evaluation").mkdir()
    gens = [
        {
            "model": "m",
            "variant": v,
            "dialogue_id": f"d{i}",
            "round": 0,
            "reply": "你好。",
            "reference": "你好！",
        }
        for v in ("base", "finetuned")
        for i in range(3)
    ]
    scores = metrics.reply_scores(gens, content=True)
    metrics.score(scores, bootstrap=20).to_csv(tmp_path / "04_evaluation/metrics.csv", index=False)
    t = figures.text_metrics_table(tmp_path).set_index(["variant", "metric"]).value
    # 你好/。 vs 你好/！: raw ROUGE-1 1/2 (你好 matches, the marks do not); content-only 1
    assert t[("base", "ROUGE-1")] == pytest.approx(50.0, abs=1e-4)
    assert t[("base", "ROUGE-1 (content only)")] == pytest.approx(100.0)


def test_miti_summary_colours_the_papers_three_models_by_three_variants(tmp_path):
    """Nine generated sources (3 models x 3 variants, as in paper.yaml) beside AnnoMI."""
    from mi_llm import miti

    e = tmp_path / "04_evaluation"
    e.mkdir()
    rows = [
        {
            "group": "generated",
            "model": m,
            "variant": v,
            "n_coded": 4,
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
            "n_coded": 4,
            **miti.summary_scores({"Q": 2, "SR": 2}),
        }
    )
    pd.DataFrame(rows).to_csv(e / "miti_summary.csv", index=False)
    fig = figures.miti_summary(tmp_path)
    assert len(figures.miti_summary_table(tmp_path).source.unique()) == 10
    assert len(fig.axes[0].get_yticklabels()) == 10  # every source drawn
