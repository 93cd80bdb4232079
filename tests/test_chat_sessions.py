"""Chat sessions coded like the study: MITI for the counselor (stage 04's coder), change/sustain talk
for the client, C:S per session, AnnoMI's human references and the published MIBot figures beside."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import counselor, make_run
from openai_server import serve as fake_llm

from mi_llm.chat import sessions, web
from mi_llm.eval import client_talk, references
from mi_llm.llm import api
from mi_llm.params import ROOT

ANNOMI = ROOT / "data" / "AnnoMI"


def coder(req: dict) -> str:
    """A deterministic stand-in coder: reflections say 听起来, questions end with ？; the client wants
    (想) or does not want (不想) to change."""
    text = req["messages"][-1]["content"]
    if "MISC client codes" in text:
        client = text.split("Client: ")[-1]
        return "sustain" if "不想" in client else "change" if "想" in client else "neutral"
    if "JSON object" in text:
        return json.dumps({"CCT": 3, "SST": 4, "PARTNER": 3, "EMPATHY": 5})
    utt = text.split("Counselor utterance to code:")[-1]
    return "Q" if "？" in utt else "SR" if "听起来" in utt else "GI"


def test_annomi_reference_counts_match_the_published_ones():
    both = client_talk.reference(client_talk.annomi_client(ANNOMI))
    ref = both[both["definition"] == "pooled"].set_index("variant")
    # AnnoMI (Wu et al.): 1,102 change / 478 sustain in high-quality MI, 72 / 63 in low-quality
    assert (ref.loc["high", "change"], ref.loc["high", "sustain"]) == (1102, 478)
    assert (ref.loc["low", "change"], ref.loc["low", "sustain"]) == (72, 63)
    assert round(ref.loc["high", "c_s"], 2) == 2.31 and round(ref.loc["low", "c_s"], 2) == 1.14
    # per conversation, independently: pandas over the simple CSV, each session's C:S, then the mean
    simple = pd.read_csv(ANNOMI / "AnnoMI-simple.csv")
    simple = simple[simple["interlocutor"] == "client"]
    per = both[both["definition"] == "per_conversation"].set_index("variant")
    for quality, d in simple.groupby("mi_quality"):
        n = d.groupby("transcript_id")["client_talk_type"].value_counts().unstack(fill_value=0)
        cs = (n["change"] / n["sustain"]).where(n["sustain"] > 0)
        assert per.loc[quality, "c_s"] == pytest.approx(cs.mean())
    assert round(per.loc["high", "c_s"], 2) == 3.23  # the same sessions: 2.31 pooled


@pytest.mark.slow  # ~60 s on 2 busy cores
def test_client_classifier_is_validated_on_held_out_recordings():
    data = client_talk.annomi_client(ANNOMI)
    v = client_talk.validate(data, bootstrap=100, seed=1)
    assert v["train_recordings"] + v["test_recordings"] == data["video_url"].nunique()
    assert v["n_train"] + v["n_test"] == len(data)
    assert v["kappa_ci_low"] <= v["kappa"] <= v["kappa_ci_high"]
    assert v["kappa"] > 0.15  # well above chance (0); a majority-class coder scores 0
    labels = set(
        client_talk.predict(client_talk.fit(data.iloc[:2000]), ["I really want to quit.", "ok"])
    )
    assert labels <= set(client_talk.LABELS)


def test_parse_client_codes():
    assert client_talk.parse("Change.") == "change" and client_talk.parse("维持") == "sustain"
    assert client_talk.parse("Code: neutral\n") == "neutral"
    with pytest.raises(ValueError, match="no client code"):
        client_talk.parse("maybe")
    for bad in [
        "not change",
        "不是改变",
        "change or sustain",
        "neutral\nchange",
        "Changes",
        "no change",
    ]:
        with pytest.raises(ValueError):
            client_talk.parse(bad)


def test_agreement_words():
    words = [client_talk.agreement_words(k) for k in (-0.1, 0.1, 0.27, 0.5, 0.7, 0.9)]
    assert words == ["poor", "slight", "fair", "moderate", "substantial", "almost perfect"]


def test_code_sessions_writes_the_stage_04_summary_with_client_talk_and_references(
    tiny_model_dir, tiny_adapter, tmp_path, monkeypatch
):
    monkeypatch.setenv("MI_LLM_RUNS", str(tmp_path / "runs"))
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with fake_llm(counselor) as backend, web.serve(run, backend_url=backend) as c:
        h = []
        for text in ["我想少喝点酒。", "可是我不想放弃周末聚会。", "我想试试每周只喝一次。"]:
            r = c.say(text, history=h, session="one")
            h += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": r["choices"][0]["message"]["content"]},
            ]
        c.say("我不想活了。", session="two")  # flagged: the referral is not coded
    with fake_llm(coder) as url:
        ep = api.Endpoint(url, "coder", "k", "remote")
        res = sessions.code_sessions(run / "chat", endpoint=ep, client_coder="llm", validate=False)
    out = run / "chat" / "coded"
    for f in (
        "miti_summary.csv",
        "miti_dialogues.csv",
        "miti_codes.jsonl",
        "client_codes.jsonl",
        "summary.png",
    ):
        assert (out / f).exists(), f
    per = pd.read_csv(out / "miti_dialogues.csv").set_index("dialogue_id")
    # session one: 3 replies "听起来你很在意这件事。[n system]", each cut into a reflection (SR) and
    # the stand-in's bracket (GI); client: change, sustain, change
    one = per.loc["one"]
    assert (one["n_replies"], one["SR"], one["GI"], one["Q"], one["n_coded"]) == (3, 3, 3, 0, 6)
    assert (one["change"], one["sustain"], one["c_s"]) == (2, 1, 2.0)
    assert one["relational"] == 4.0 and one["pct_mi_consistent"] == 1.0
    two = per.loc["two"]
    assert (two["n_utterances"], two["n_referrals"], two["change"], two["sustain"]) == (0, 1, 0, 1)
    assert two["c_s"] == 0.0 and math.isnan(two["r_q"])
    summary = pd.read_csv(out / "miti_summary.csv")
    assert (
        list(summary.columns[: len(sessions.miti.SUMMARY_COLUMNS)]) == sessions.miti.SUMMARY_COLUMNS
    )
    chat = summary[summary["group"] == "chat"].set_index("definition")
    row = chat.loc["pooled"]
    assert (row["model"], row["variant"], row["n_dialogues"]) == ("gemma3-270m", "finetuned", 2)
    assert (row["change"], row["sustain"], row["c_s"]) == (2, 2, 1.0)  # 2 / 2 over both sessions
    assert chat.loc["per_conversation", "c_s"] == 1.0  # mean of 2/1 and 0/1
    annomi = summary[summary["model"] == "annomi"].set_index(["variant", "definition"])
    assert annomi.loc[("high", "pooled"), "c_s"] == pytest.approx(1102 / 478)
    assert annomi.loc[("low", "pooled"), "c_s"] == pytest.approx(72 / 63)
    assert annomi.loc[("high", "per_conversation"), "c_s"] > 3  # the definition MIBot reports
    assert summary["what"].notna().all()  # every row says which definition it uses
    mibot = summary[summary["model"] == "mibot"].iloc[0]
    assert mibot["definition"] == "per_conversation"
    published = references.REFERENCES[0]
    assert (mibot["r_q"], mibot["pct_mi_consistent"], mibot["c_s"]) == (
        published["r_q"],
        published["pct_mi_consistent"],
        published["c_s"],
    )
    assert "Mahmood" in mibot["source"] and mibot["group"] == "published"
    codes = [
        json.loads(x)
        for x in Path(out / "client_codes.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [c["code"] for c in codes if c["dialogue_id"] == "one"] == [
        "change",
        "sustain",
        "change",
    ]
    assert res["figure"].stat().st_size > 10_000
