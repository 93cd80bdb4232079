"""Stage 05's readers (mi_llm.study.tables) read the one schema each producer writes, and nothing else.

Every artifact here is written by its producer's own code on small data (quality.rank +
write_artifacts, transcribe.save, metrics.score, therapy.therapy_metrics, forecast_eval.score +
write_table); a renamed column must fail naming the file and the column.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import sample_generations

from mi_llm import stages
from mi_llm.data import quality, transcribe
from mi_llm.data.schema import DataError, Dialogue, Turn
from mi_llm.eval import forecast, forecast_eval, metrics, therapy
from mi_llm.study import tables

CRIT = list(quality.CRITERIA)
JUDGED = {  # corpus -> rubric scores of its judged dialogues (None: the judge's answer failed)
    "cpsycound": [(2, 3, 3, 1), (1, 2, 3, 1), (2, 3, 2, 1), (2, 2, 3, 1), (1, 3, 3, 1)],
    "smilechat": [(1, 2, 2, 1), (1, 1, 2, 0), None],
    "soulchatcorpus": [None, None],  # every judgement failed: not judged
}


def _dialogue(corpus: str, i: int) -> Dialogue:
    turns = [Turn("client", "我最近很烦。"), Turn("counselor", f"发生了什么{i}？")]
    return Dialogue(f"{corpus}-{i}", corpus, turns)


def write_quality(run):
    loaded = {
        c: ([_dialogue(c, i) for i in range(6)], {"fixture": c == "smilechat"}) for c in JUDGED
    }
    records = [
        {
            "corpus": c,
            "dialogue_id": f"{c}-{i}",
            "ok": s is not None,
            "scores": dict(zip(CRIT, s)) if s else None,
            "total": sum(s) if s else None,
        }
        for c, judged in JUDGED.items()
        for i, s in enumerate(judged)
    ]
    ranked = quality.rank(quality.describe_all(loaded), records, 1, bootstrap=200, seed=0)
    quality.write_artifacts(run / "01_corpus_quality", ranked, records)
    return ranked


def write_transcription(run):
    report = {
        "unit": "turn",
        "attempted": 5,
        transcribe.REPORT_VALID: 2,
        transcribe.REPORT_FAILED: {"too short": 2, "speakers do not alternate": 1},
    }
    rec = {
        "id": "x",
        "source_corpus": "cpsycound",
        "source_id": "1",
        "prompt_version": "v1",
        "topic": "婚恋",
        "messages": [{"role": "user", "content": "你好"}],
    }
    transcribe.save(run / "02_mi_transcription", [rec], [rec], report, [])


def write_metrics(run, content=False):
    e = run / "04_evaluation"
    e.mkdir(parents=True, exist_ok=True)
    scores = metrics.reply_scores(sample_generations(), content=content)
    table = metrics.score(scores, bootstrap=50)
    table.to_csv(run / stages.METRICS, index=False)  # notebook 04's writer
    return table


def write_therapy(run):
    (run / "04_evaluation").mkdir(parents=True, exist_ok=True)
    tm = therapy.therapy_metrics(sample_generations())
    tm.to_csv(run / stages.THERAPY_METRICS, index=False)  # notebook 04's writer
    return tm


def forecaster_frame() -> pd.DataFrame:
    """forecaster.csv's rows as forecast_eval.evaluate builds them, from forecast_eval.score on made-up labels."""
    rng = np.random.default_rng(0)
    y = list(rng.choice(forecast.TAGS, 60))
    groups = [f"rec{i // 6}" for i in range(60)]
    preds = {
        "majority": ("baseline", "none", [y[0]] * 60),
        "previous_behaviour": ("baseline", "previous label", list(rng.permutation(y))),
        "forecaster_universal": ("forecaster", "language-independent", y[:40] + [y[0]] * 20),
    }
    rows = [
        {
            "model": name,
            "role": role,
            "features": feats,
            "n_train": 240,
            "n_train_sessions": 20,
            "n_train_recordings": 16,
            "n_test_transcripts": 10,
            "reference": "previous_behaviour",
            **forecast_eval.score(y, p, groups, 100, 0, reference=preds["previous_behaviour"][2]),
        }
        for name, (role, feats, p) in preds.items()
    ]
    df = pd.DataFrame(rows)
    df["beats_baselines"] = forecast_eval.beats_baselines(df)
    return df


def write_forecaster(run):
    df = forecaster_frame()
    forecast_eval.write_table(df, run / "04_evaluation")
    return df


def _rename(f, old, new):
    df = pd.read_csv(f)
    df.rename(columns={old: new}).to_csv(f, index=False)


# ----------------------------------------------------------------------------- quality
def test_quality_table_reads_rank_and_write_artifacts(tmp_path):
    ranked = write_quality(tmp_path)
    t = tables.quality_table(tmp_path)
    assert list(t.columns) == [
        "corpus",
        "rank",
        "selected",
        "fixture",
        "judged",
        "metric",
        "value",
        "ci_low",
        "ci_high",
    ]
    assert list(dict.fromkeys(t.corpus)) == list(ranked.corpus)
    assert set(t.loc[~t.judged, "corpus"]) == {"soulchatcorpus"}  # drawn as "not judged"
    assert t.loc[~t.judged, "value"].isna().all()
    top = t[(t.corpus == "cpsycound") & (t.metric == "total")].iloc[0]
    real = ranked.set_index("corpus").loc["cpsycound"]
    assert (top.value, top.ci_low, top.ci_high) == (
        real.total,
        real.total_ci_low,
        real.total_ci_high,
    )
    assert top.selected and not top.fixture
    assert t[t.corpus == "smilechat"].fixture.all()
    comp = t[(t.corpus == "smilechat") & (t.metric == "comprehensiveness")].iloc[0]
    assert (comp.value, comp.ci_low, comp.ci_high) == (1.0, 1.0, 1.0)  # failed judgement left out
    tot = t[(t.corpus == "smilechat") & (t.metric == "total")].iloc[0]
    assert math.isnan(tot.ci_low)  # two judged dialogues: quality.rank gives no CI


@pytest.mark.parametrize("column", ["total_ci_low", "selected", quality.FIXTURE_COLUMN, "safety"])
def test_quality_table_names_file_and_missing_column(tmp_path, column):
    write_quality(tmp_path)
    _rename(tmp_path / stages.QUALITY, column, column + "_x")
    with pytest.raises(ValueError, match=rf"quality\.csv: column '{column}' missing"):
        tables.quality_table(tmp_path)


def test_quality_table_names_file_record_and_field_of_judgements(tmp_path):
    write_quality(tmp_path)
    f = tmp_path / stages.JUDGEMENTS
    recs = [json.loads(x) for x in f.read_text().splitlines()]
    recs[1]["parsed"] = recs[1].pop("scores")
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match=r"judgements\.jsonl: record 1: field 'scores'"):
        tables.quality_table(tmp_path)


# ----------------------------------------------------------------------------- transcription
def test_transcription_table_reads_transcribe_save(tmp_path):
    write_transcription(tmp_path)
    t = tables.transcription_table(tmp_path)
    assert t.to_dict("records") == [
        {"outcome": "valid", "count": 2},
        {"outcome": "failed: too short", "count": 2},
        {"outcome": "failed: speakers do not alternate", "count": 1},
    ]


@pytest.mark.parametrize("key", [transcribe.REPORT_VALID, transcribe.REPORT_FAILED])
def test_transcription_table_names_file_and_missing_key(tmp_path, key):
    write_transcription(tmp_path)
    f = tmp_path / stages.TRANSCRIPTION_REPORT
    rep = json.loads(f.read_text())
    rep["n_" + key] = rep.pop(key)
    f.write_text(json.dumps(rep))
    with pytest.raises(DataError, match=rf"report\.json: .*field '{key}': missing"):
        tables.transcription_table(tmp_path)


# ----------------------------------------------------------------------------- text metrics
@pytest.mark.parametrize("content", [False, True])
def test_text_metrics_table_reads_metrics_score(tmp_path, content):
    table = write_metrics(tmp_path, content)
    t = tables.text_metrics_table(tmp_path)
    assert list(t.columns) == [
        *["model", "variant", "n_dialogues", "metric", "value", "ci_low", "ci_high", "too_small"]
    ]
    labels = list(tables.TEXT_METRICS.values())
    labels += [f"{v} (content only)" for v in labels] if content else []
    assert list(dict.fromkeys(t.metric)) == labels
    row = t[(t.variant == "finetuned") & (t.metric == "ROUGE-L")].iloc[0]
    real = table.set_index("variant").loc["finetuned"]
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx(
        (real.rougeL, real.rougeL_ci_low, real.rougeL_ci_high)
    )


@pytest.mark.parametrize("column", ["rougeL", "bleu4_ci_high", "variant", "n_dialogues"])
def test_text_metrics_table_names_file_and_missing_column(tmp_path, column):
    write_metrics(tmp_path)
    _rename(tmp_path / stages.METRICS, column, column.upper() + "_")
    with pytest.raises(ValueError, match=rf"metrics\.csv: column '{column}' missing"):
        tables.text_metrics_table(tmp_path)


def test_text_metrics_table_wants_every_content_score_when_one_is_there(tmp_path):
    write_metrics(tmp_path, content=True)
    _rename(tmp_path / stages.METRICS, "rouge2_content", "rouge_2_content")
    with pytest.raises(ValueError, match=r"metrics\.csv: column 'rouge2_content' missing"):
        tables.text_metrics_table(tmp_path)


# ----------------------------------------------------------------------------- therapy metrics
def test_therapy_metrics_table_reads_therapy_metrics(tmp_path):
    tm = write_therapy(tmp_path)
    t = tables.therapy_metrics_table(tmp_path)
    ids = [*therapy.THERAPY_IDS, "n", "n_dialogues"]
    assert list(t.columns) == [*ids, "metric", "value", "ci_low", "ci_high", "too_small"]
    assert t.too_small.tolist() == (t.n_dialogues < 5).tolist()
    assert list(dict.fromkeys(t.metric)) == therapy.COMPARISON == list(tables.THERAPY)
    assert len(t) == len(tm) * len(therapy.COMPARISON)
    q = t[(t.variant == "base") & (t.metric == "question_marks") & (t.category == "all")]
    n = q.n.iloc[0]
    assert q.value.tolist() == [4.0 / n]  # the base replies hold four question marks: per reply
    real = tm[(tm.variant == "base") & (tm.category == "all")].iloc[0]
    assert (q.ci_low.iloc[0], q.ci_high.iloc[0]) == (
        real.question_marks_ci_low,
        real.question_marks_ci_high,
    )


@pytest.mark.parametrize("column", ["category", "sentiment_distance", "named_rounds"])
def test_therapy_metrics_table_names_file_and_missing_column(tmp_path, column):
    write_therapy(tmp_path)
    _rename(tmp_path / stages.THERAPY_METRICS, column, "topic")
    with pytest.raises(ValueError, match=rf"therapy_metrics\.csv: column '{column}' missing"):
        tables.therapy_metrics_table(tmp_path)


# ----------------------------------------------------------------------------- forecaster
def test_forecast_write_table_writes_forecaster_columns_in_order(tmp_path):
    df = forecaster_frame()
    assert (
        list(df.columns) == forecast_eval.FORECASTER_COLUMNS
    )  # as forecast_eval.evaluate builds it
    f = forecast_eval.write_table(df, tmp_path)
    assert f == tmp_path / stages.file_name(stages.FORECASTER)
    assert list(pd.read_csv(f).columns) == forecast_eval.FORECASTER_COLUMNS
    with pytest.raises(ValueError, match="forecaster table lacks column"):
        forecast_eval.write_table(df.drop(columns="reference"), tmp_path)


def test_forecaster_table_reads_forecast_write_table(tmp_path):
    df = write_forecaster(tmp_path)
    t = tables.forecaster_table(tmp_path)
    assert list(t.columns) == ["method", "metric", "value", "ci_low", "ci_high"]
    assert list(dict.fromkeys(t.metric)) == forecast_eval.FORECASTER_METRICS
    assert list(dict.fromkeys(t.method)) == list(df.model)
    acc = t[t.metric == "accuracy"]
    assert acc.ci_low.isna().all()  # score gives accuracy no CI
    m = t[(t.method == "majority") & (t.metric == "macro_f1")].iloc[0]
    real = df.set_index("model").loc["majority"]
    assert (m.value, m.ci_low, m.ci_high) == pytest.approx(
        (real.macro_f1, real.macro_f1_ci_low, real.macro_f1_ci_high)
    )


@pytest.mark.parametrize("column", ["model", "macro_f1", "f1_other_ci_low", "beats_baselines"])
def test_forecaster_table_names_file_and_missing_column(tmp_path, column):
    write_forecaster(tmp_path)
    _rename(tmp_path / stages.FORECASTER, column, "method" if column == "model" else column + "_")
    with pytest.raises(ValueError, match=rf"forecaster\.csv: column '{column}' missing"):
        tables.forecaster_table(tmp_path)


def test_bad_artifacts_raise_naming_file_and_record(tmp_path):
    (tmp_path / "02_mi_transcription").mkdir()
    (tmp_path / "02_mi_transcription/report.json").write_text('{"n_requests": 3}')
    with pytest.raises(ValueError, match=r"report\.json: .*field 'valid': missing"):
        tables.transcription_table(tmp_path)
    (tmp_path / "04_evaluation").mkdir()
    (tmp_path / "04_evaluation/miti_codes.jsonl").write_text(
        '{"utterances": [{"codes": ["Q"]}]}\n{"code": "Q"}\n'
    )  # the one schema mi_llm.eval.miti writes: "utterances", nothing else
    with pytest.raises(
        ValueError, match=r"miti_codes\.jsonl: record 1: field 'utterances' missing"
    ):
        tables.miti_codes_table(tmp_path)
    (tmp_path / "04_evaluation/miti_summary.csv").write_text(
        "group,model,variant,n_coded,tech\ngenerated,m,base,3,4\n"
    )
    with pytest.raises(ValueError, match=r"miti_summary\.csv: column 'definition' missing"):
        tables.miti_summary_table(tmp_path)


def test_text_metrics_table_names_the_content_scores_beside_the_raw_ones(tmp_path):
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
    t = tables.text_metrics_table(tmp_path).set_index(["variant", "metric"]).value
    # 你好/。 vs 你好/！: raw ROUGE-1 1/2 (你好 matches, the marks do not); content-only 1
    assert t[("base", "ROUGE-1")] == pytest.approx(50.0, abs=1e-4)
    assert t[("base", "ROUGE-1 (content only)")] == pytest.approx(100.0)
