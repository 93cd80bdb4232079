"""The readers of stage 05: a run's artifacts into tidy tables (mi_llm.tables)."""

from __future__ import annotations

import pandas as pd
import pytest

from mi_llm import metrics, tables


def test_bad_artifacts_raise_naming_file_and_record(tmp_path):
    (tmp_path / "02_mi_transcription").mkdir()
    (tmp_path / "02_mi_transcription/report.json").write_text('{"n_requests": 3}')
    with pytest.raises(ValueError, match=r"report\.json: no valid count"):
        tables.transcription_table(tmp_path)
    (tmp_path / "04_evaluation").mkdir()
    (tmp_path / "04_evaluation/miti_codes.jsonl").write_text(
        '{"code": "Question"}\n{"text": "hi"}\n'
    )
    with pytest.raises(ValueError, match=r"miti_codes\.jsonl: record 1: no code"):
        tables.miti_codes_table(tmp_path)


def test_tidy_reads_wide_long_and_per_reply_tables():
    wide = pd.DataFrame(
        {
            "model": ["m"],
            "variant": ["base"],
            "bleu4": [3.0],
            "bleu4_ci_low": [2.0],
            "bleu4_ci_high": [4.0],
            "n": [5],
        }
    )
    assert tables.tidy(wide, "w").to_dict("records") == [
        {
            "model": "m",
            "variant": "base",
            "metric": "bleu4",
            "value": 3.0,
            "ci_low": 2.0,
            "ci_high": 4.0,
        }
    ]
    per_reply = pd.DataFrame(
        {
            "model": "m",
            "variant": "base",
            "dialogue_id": list("abcd"),
            "bleu4": [1.0, 2.0, 3.0, 4.0],
        }
    )
    row = tables.tidy(per_reply, "p").iloc[0]
    assert row.value == 2.5 and 1.0 <= row.ci_low < 2.5 < row.ci_high <= 4.0
    with pytest.raises(ValueError, match="long.csv"):
        tables.tidy(pd.DataFrame({"metric": ["bleu4"], "x": [1]}), "long.csv")


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
