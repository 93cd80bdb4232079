"""Stage 04's writer: the MITI coder end to end against a local OpenAI-compatible server."""

from __future__ import annotations

import json

import numpy as np
import openai_server  # tests/ is on sys.path (pytest rootdir-relative import)
import pandas as pd
import pytest
from conftest import miti_params

from mi_llm.eval import miti, miti_check, writer
from mi_llm.eval.segment import segment
from mi_llm.llm import api
from mi_llm.params import ROOT, MitiParams


def _utterance(req: dict) -> str:
    text = req["messages"][-1]["content"]
    return text.split("Counselor utterance to code:\n", 1)[1].split("\n\nAnswer with", 1)[0]


def _handler(seen: dict):
    """A coder that answers like a real model would: Q for questions, else SR; JSON globals.

    Utterances containing 'never' are answered with prose every time (missing after retries);
    those containing 'once' get prose first and a code on the retry.
    """

    def handle(req):
        text = req["messages"][-1]["content"]
        if "Counselor utterance to code:" not in text:
            return 'Here you go:\n```json\n{"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 5}\n```'
        utt = _utterance(req)
        seen[utt] = seen.get(utt, 0) + 1
        if "never" in utt or ("once" in utt and seen[utt] == 1):
            return "I think the counselor is being supportive here."
        return "Q" if ("?" in utt or "？" in utt) else "SR"

    return handle


def test_coder_end_to_end_against_a_local_server(generations, tmp_path, monkeypatch):
    text = generations.read_text(encoding="utf-8").splitlines()
    rec = json.loads(text[0])
    rec["reply"] = "never coded: 我明白你的感受"  # answered with prose every time -> missing
    rec2 = json.loads(text[1])
    rec2["reply"] = "once: 我明白你的感受"  # prose first, a code on the retry
    text[0], text[1] = json.dumps(rec, ensure_ascii=False), json.dumps(rec2, ensure_ascii=False)
    generations = tmp_path / "generations.jsonl"
    generations.write_text("\n".join(text) + "\n", encoding="utf-8")
    p = miti_params(tmp_path, annomi_sample=6, gold_sample=5, parse_retries=1, rate_globals=True)
    p.llm.max_concurrency = 4  # the test server's listen queue holds 5 connections
    out = tmp_path / "out"
    out.mkdir()
    seen = {}
    with openai_server.serve(_handler(seen)) as url:
        ep = api.Endpoint(url, "test-model", "test-key")
        res = writer.write_miti(p, generations, out, endpoint=ep)
        n_calls = url.stats.count
        again = writer.write_miti(p, generations, out, endpoint=ep)  # everything from the cache
        assert url.stats.count == n_calls
    assert seen["never coded: 我明白你的感受"] == 2 and seen["once: 我明白你的感受"] == 2
    codes = [
        json.loads(x) for x in (out / "miti_codes.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(codes) == 4 and all(c["prompt_version"] == MitiParams.prompt_version for c in codes)
    checks = [
        json.loads(x) for x in (out / "miti_check_codes.jsonl").read_text("utf-8").splitlines()
    ]
    assert [c["check"] for c in checks] == ["annomi"] * 6 + ["gold"] * 5
    utts = {c["turns"][ut["turn"]]["text"]: ut for c in codes for ut in c["utterances"]}
    never, once = utts["never coded: 我明白你的感受"], utts["once: 我明白你的感受"]
    assert never["codes"] is None and not never["ok"] and len(never["raw"]) == 2
    assert "not a MITI code" in never["error"]
    assert once["codes"] == ["SR"] and once["ok"] and len(once["raw"]) == 2
    summary = res["summary"]
    s = summary[summary["definition"] == "pooled"].set_index(["model", "variant"])
    base, ft = s.loc[("tiny", "base")], s.loc[("tiny", "finetuned")]
    # counted over utterances: each reply cut by segment(), the handler's code for each
    recs = [json.loads(x) for x in generations.read_text(encoding="utf-8").splitlines()]
    for row, variant in ((base, "base"), (ft, "finetuned")):
        segs = [x for r in recs if r["variant"] == variant for x in segment(r["reply"])]
        asks = sum("?" in x or "？" in x for x in segs)
        assert row["n_utterances"] == len(segs) and row["n_replies"] == 6 and row["Q"] == asks
        assert row["SR"] == len(segs) - asks - (variant == "base")  # base: one never coded
        assert row["n_coded"] == len(segs) - (variant == "base")
        assert row["r_q_ci_low"] <= row["r_q"] <= row["r_q_ci_high"] or np.isnan(row["r_q"])
    assert ft["Q"] == 6  # every fine-tuned reply ends with its own question utterance
    assert base["pass_rate"] == pytest.approx(base["n_coded"] / base["n_utterances"])
    assert base["n_missing"] == 1 and ft["n_missing"] == 0
    assert (
        base["technical"] == 3.5
        and base["relational"] == 4.5
        and base["relational_label"] == "good"
    )
    assert set(s.index) >= {("annomi", "high"), ("annomi", "low")}
    saved = pd.read_csv(out / "miti_summary.csv")
    assert list(saved.columns) == miti.SUMMARY_COLUMNS and len(saved) == 8  # x 2 definitions
    agree = pd.read_csv(out / "coder_agreement.csv")
    assert list(agree["comparison"]) == [
        "auto_vs_annomi",
        "auto_vs_welivita_pu_gold",
        "welivita_pu_classifier_vs_gold",
    ]
    # the authors' classifier on the same sentences, from the CSV's Prediction column by hand
    raw = pd.read_csv(ROOT / MitiParams.gold_path, keep_default_na=False)
    rows = raw.loc[[int(c["dialogue_id"].split(":")[1]) for c in checks[6:]]]
    # a prediction without a MITI counterpart (Support, ...) is a disagreement, never dropped
    truth = [miti.code_label(miti_check.GOLD_CODES[x]) for x in rows["Ground truth"]]
    hits = [
        x in miti_check.GOLD_CODES and miti.code_label(miti_check.GOLD_CODES[x]) == t
        for x, t in zip(rows["Prediction"], truth)
    ]
    assert agree.loc[2, "n_coded"] == len(hits) == 5
    assert agree.loc[2, "accuracy"] == pytest.approx(np.mean(hits))
    # the handler answers Q for an utterance with a question mark, else SR; an item compares as
    # the set of its utterances' codes: the expected agreement by hand
    for row, c, to_label in zip(
        list(agree.itertuples())[:2],
        (checks[:6], checks[6:]),
        (miti_check.coder_label, miti.code_label),
    ):
        said = [
            to_label(
                ["Q" if "?" in u["turns"][ut["turn"]]["text"] else "SR" for ut in u["utterances"]]
            )
            for u in c
        ]
        truth = [u["reference"] for u in c]
        assert row.n_sampled == len(c) and row.accuracy == pytest.approx(
            np.mean([a == b for a, b in zip(said, truth)])
        )
    assert agree.loc[0, "n_clusters"] == len({u["cluster"] for u in checks[:6]})
    conf = pd.read_csv(out / "coder_confusion.csv")
    assert conf.groupby("comparison")["n"].sum().to_dict() == {
        "auto_vs_annomi": 6,
        "auto_vs_welivita_pu_gold": 5,
        "welivita_pu_classifier_vs_gold": 5,
    }
    assert len(list((out / "worksheets").glob("tiny__*.csv"))) == 4
    pd.testing.assert_frame_equal(again["summary"], res["summary"])


def test_coder_opens_the_remote_endpoint_itself(generations, tmp_path, monkeypatch):
    recs = [json.loads(x) for x in generations.read_text(encoding="utf-8").splitlines()]
    base = {(r["dialogue_id"], r["round"]): r["reply"] for r in recs if r["variant"] == "base"}
    for r in recs:  # both variants give the same replies: the same prompt is asked once
        r["reply"] = base[(r["dialogue_id"], r["round"])]
    same = tmp_path / "generations.jsonl"
    same.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8"
    )
    with openai_server.serve(_handler({})) as url:
        p = miti_params(tmp_path, annomi_sample=0, gold_sample=0, rate_globals=False)
        p.llm.provider, p.llm.base_url = "remote", url
        monkeypatch.setenv(p.llm.api_key_env, "test-key")
        res = writer.write_miti(p, same, tmp_path, endpoint=None)
    units = miti.units_from_generations(same)
    asked = {
        (u["turns"][ut["turn"]]["text"], miti.render_turns(ut["context"][-2:]))
        for u in units
        for ut in u["utterances"]
    }  # one request per distinct utterance in its context (context_turns 2 in the smoke recipe)
    assert url.stats.count == len(asked) and len(recs) == 12
    s = res["summary"].query("definition == 'pooled'").set_index("variant")
    assert (
        s.loc["base", "SR"] == s.loc["finetuned", "SR"]
        and s.loc["base", "n_coded"] == s.loc["base", "n_utterances"]
    )
    assert np.isnan(s.loc["base", "technical"])  # globals not rated
    assert res["agreement"].empty
