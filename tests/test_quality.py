"""Stage 01 corpus quality: statistics, judge-answer parsing, bootstrap, ranking, a judge run."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from mi_llm import params
from mi_llm.data import quality, quality_ties
from mi_llm.data.schema import Dialogue, Turn


def dlg(id_, *turns, corpus="hand"):
    """A dialogue from (speaker letter, text) pairs: c = client, s = counselor."""
    sp = {"c": "client", "s": "counselor"}
    return Dialogue(
        id_, corpus, [Turn(sp[s], t) for s, t in turns], source={"file": "x", "record": id_}
    )


# ----------------------------------------------------------------------------- statistics
HAND = [
    dlg(
        "a",
        ("c", "我最近睡不好。"),
        ("s", "你愿意多说一些吗"),
        ("c", "好的"),
        ("s", "听起来你很累。"),
    ),
    dlg(
        "b",
        ("c", "我 最近睡不好。"),
        ("s", "你愿意多说一些吗"),
        ("c", "好的"),
        ("s", "听起来你很累。"),
    ),
    dlg("c", ("c", "工作压力大"), ("s", "What happened?"), ("s", "我们试试吧"), ("c", "嗯")),
]


def test_describe_hand_made_corpus():
    s = quality.describe(HAND, {"n_ok": 3, "n_bad": 2, "errors": []})
    assert s["n_dialogues"] == 3 and s["n_turns"] == 12
    assert s["mean_turns"] == 4 and s["median_turns"] == 4
    # counselor turns: 8,7,8,7,14,5 characters; client: 7,2,8,2,5,1
    assert s["mean_counselor_chars"] == pytest.approx((8 + 7 + 8 + 7 + 14 + 5) / 6)
    assert s["mean_client_chars"] == pytest.approx((7 + 2 + 8 + 2 + 5 + 1) / 6)
    # questions: 吗 x2 (a, b), "?" x1 (c); not: 听起来你很累。 x2, 我们试试吧
    assert s["question_rate"] == pytest.approx(3 / 6)
    # b equals a once whitespace is normalised away
    assert s["duplicate_rate"] == pytest.approx(1 / 3)
    # b's two counselor turns repeat a's
    assert s["repeated_turn_rate"] == pytest.approx(2 / 6)
    assert s["alternation_violations"] == 1 and s["dialogues_with_violations"] == 1
    assert s["n_bad"] == 2


def test_describe_empty_corpus_is_nan_not_error():
    s = quality.describe([])
    assert s["n_dialogues"] == 0 and math.isnan(s["mean_turns"]) and math.isnan(s["question_rate"])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("你觉得呢？", True),
        ("Why now?", True),
        ("你愿意试试吗", True),
        ("你怎么看呢，说说看。", True),
        ("“你还好吗”", True),
        ("我们试试吧。", False),
        ("听起来你很难过。", False),
        ("这没什么。", False),
        ("吗啡是一种药物。", False),
    ],
)
def test_is_question(text, expected):
    assert quality.is_question(text) is expected


def test_describe_all_keeps_order():
    df = quality.describe_all({"z": (HAND[:1], {"n_bad": 0}), "a": (HAND, {"n_bad": 1})})
    assert list(df["corpus"]) == ["z", "a"] and list(df["n_dialogues"]) == [1, 3]


# ----------------------------------------------------------------------------- prompt
def test_render_dialogue_truncates_at_turn_boundary():
    d = HAND[0]
    full, cut = quality.render_dialogue(d, 10_000)
    assert not cut and full.splitlines()[0] == "来访者：我最近睡不好。" and "咨询师：" in full
    short, cut = quality.render_dialogue(d, 25)
    assert cut and short.splitlines()[:2] == full.splitlines()[:2]
    assert "后面还有 2 轮未显示" in short
    tiny, cut = quality.render_dialogue(d, 5)
    assert cut and tiny.startswith("来访者：我") and "后面还有 3 轮未显示" in tiny


def test_prompt_has_rubric_and_slot():
    t = quality.prompt_template("judge_v1")
    assert "{dialogue}" in t["user"] and all(c in t["system"] + t["user"] for c in quality.CRITERIA)
    msgs, cut = quality.judge_messages(HAND[0], t, 1000)
    assert [m["role"] for m in msgs] == ["system", "user"] and not cut
    assert "来访者：我最近睡不好。" in msgs[1]["content"] and "{dialogue}" not in msgs[1]["content"]


# ----------------------------------------------------------------------------- parsing
GOOD = {"comprehensiveness": 2, "professionalism": 1, "authenticity": 3, "safety": 0}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD),
        "```json\n" + json.dumps(GOOD) + "\n```",
        "评分如下：" + json.dumps(GOOD) + " 以上。",
        "Here you go {not json} then " + json.dumps({**GOOD, "reason": "ok"}),
        json.dumps(
            {"Comprehensiveness": 2, "PROFESSIONALISM": 1, "authenticity": 3.0, "safety": 0}
        ),
        json.dumps({"全面性": 2, "专业性": 1, "真实性": 3, "安全性": 0}, ensure_ascii=False),
    ],
)
def test_parse_good(text):
    assert quality.parse_judgement(text) == GOOD


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("I think it is a good dialogue, 8/9.", "no JSON"),
        ('{"comprehensiveness": 2, "professionalism": 1, "authenticity": 3', "no JSON"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "safety"}),
            "missing criterion 'safety'",
        ),
        (json.dumps({**GOOD, "professionalism": 4}), "outside 0..3"),
        (json.dumps({**GOOD, "safety": -1}), "outside 0..1"),
        (json.dumps({**GOOD, "authenticity": "high"}), "not a number"),
        (json.dumps({**GOOD, "authenticity": "2"}), "not a number"),
        (json.dumps({**GOOD, "safety": True}), "not a number"),
        (json.dumps({**GOOD, "professionalism": 1.5}), "whole number"),
        ('{"comprehensiveness": <0-2>, "professionalism": <0-3>}', "no JSON"),
    ],
)
def test_parse_bad(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        quality.parse_judgement(text)


# ----------------------------------------------------------------------------- ranking
def rec(corpus, scores):
    ok = scores is not None
    return {
        "corpus": corpus,
        "ok": ok,
        "scores": scores,
        "total": sum(scores.values()) if ok else None,
    }


def sc(c, p, a, s):
    return dict(zip(quality.CRITERIA, (c, p, a, s)))


def stats_frame(sizes: dict) -> pd.DataFrame:
    """A statistics table with the contract columns (values other than size do not matter here)."""
    df = pd.DataFrame({"corpus": list(sizes), "n_dialogues": list(sizes.values())})
    for col in quality.QUALITY_COLUMNS[2:7]:
        df[col] = 0.0
    return df


def test_rank_means_ci_missing_and_selection():
    stats = stats_frame({"low": 5, "high": 5, "none": 9, "tie_big": 20, "tie_small": 3})
    records = [
        rec("low", sc(0, 1, 1, 0)),
        rec("low", sc(1, 1, 1, 0)),
        rec("low", None),
        rec("high", sc(2, 3, 3, 1)),
        rec("high", sc(2, 2, 3, 1)),
        rec("none", None),
        rec("none", None),
        rec("tie_big", sc(1, 2, 2, 1)),
        rec("tie_small", sc(1, 2, 2, 1)),
    ]
    df = quality.rank(stats, records, top_k=2, bootstrap=500, seed=0)
    assert list(df.columns[: len(quality.QUALITY_COLUMNS)]) == quality.QUALITY_COLUMNS
    by = df.set_index("corpus")
    assert by.loc["low", "comprehensiveness"] == 0.5 and by.loc["low", "total"] == 2.5
    assert by.loc["low", "n_judged"] == 2 and by.loc["low", "n_missing"] == 1
    assert math.isnan(by.loc["low", "total_ci_low"])  # two judged dialogues: no CI, said so
    assert by.loc["low", "ci_note"] == "no CI: 2 judged dialogue(s), fewer than 5"
    assert math.isnan(by.loc["tie_big", "total_ci_low"])  # one judged dialogue: no CI
    assert math.isnan(by.loc["none", "total"]) and by.loc["none", "n_missing"] == 2
    # high 8.5 > ties at 6 (larger corpus first) > low 2.5 > none (NaN, last)
    assert list(df["corpus"]) == ["high", "tie_big", "tie_small", "low", "none"]
    assert list(df["rank"]) == [1, 2, 3, 4, 5]
    assert list(df["selected"]) == [True, True, False, False, False]
    # the tie at 6 decides the selection, and quality.csv says it is a tie, not a better score
    assert list(df["tied_with"]) == ["", "tie_small", "tie_big", "", ""]
    assert by.loc["tie_big", "selection_note"] == (
        "tie at total 6 with tie_small: ranked among them by the tie-break (higher "
        "total_ci_low, then more dialogues, then the name), not by a better score"
    )
    assert by.loc["high", "selection_note"] == "" and by.loc["none", "selection_note"] == ""
    assert quality_ties.tie_note(df) == (
        "tie_big, tie_small tie at total 6: tie_big selected by the tie-break (higher "
        "total_ci_low, then more dialogues, then the name), not by a better score."
    )


def test_five_corpora_at_one_total_are_a_tie_in_the_table_and_the_figure():
    """All five smoke corpora scored 5.0: two selected, and both the csv and the plot say tie."""
    sizes = {"a": 3, "b": 3, "c": 4, "d": 2, "e": 2}
    stats = stats_frame(sizes)
    records = [rec(c, sc(1, 2, 2, 0)) for c in sizes]
    df = quality.rank(stats, records, top_k=2, bootstrap=100, seed=0)
    assert list(df["corpus"][:2]) == ["c", "a"] and df["selection_note"].str.startswith("tie").all()
    assert quality_ties.tie_note(df).startswith("c, a, b, d, e tie at total 5: c, a selected")
    title = quality.plot_totals(df).get_title()
    assert "selected by the tie-break" in title and "not by a better score" in title
    # no tie across the selection line: nothing to say in the caption
    assert quality_ties.tie_note(quality.rank(stats, records, top_k=5, bootstrap=10, seed=0)) == ""


def test_rank_ci_needs_five_judged_dialogues():
    # four identical judgements used to give the CI [6, 6], of width 0
    stats = stats_frame({"four": 9, "five": 9})
    records = [rec("four", sc(1, 2, 2, 1)) for _ in range(4)]
    records += [rec("five", sc(c, 2, 2, 1)) for c in (0, 1, 2, 1, 0)]  # totals 5 6 7 6 5
    by = quality.rank(stats, records, top_k=1, bootstrap=500, seed=0).set_index("corpus")
    assert by.loc["four", "total"] == 6.0 and math.isnan(by.loc["four", "total_ci_low"])
    assert math.isnan(by.loc["four", "total_ci_high"])
    assert by.loc["four", "ci_note"] == "no CI: 4 judged dialogue(s), fewer than 5"
    assert by.loc["five", "ci_note"] == ""
    assert 5 <= by.loc["five", "total_ci_low"] < 5.8 < by.loc["five", "total_ci_high"] <= 7


def test_rank_fills_selection_with_unjudged_when_needed():
    stats = stats_frame({"a": 1, "b": 7, "c": 3})
    df = quality.rank(stats, [rec("a", sc(1, 1, 1, 1))], top_k=2, bootstrap=100, seed=0)
    assert list(df["corpus"]) == ["a", "b", "c"] and list(df["selected"]) == [True, True, False]
    assert list(df["n_judged"]) == [1, 0, 0]
    with pytest.raises(ValueError, match="mean_turns"):
        quality.rank(stats.drop(columns="mean_turns"), [], top_k=1, bootstrap=10, seed=0)


def test_sample_dialogues_seeded_and_independent():
    ds = [dlg(str(i), ("c", f"问题{i}"), ("s", "嗯")) for i in range(30)]
    a = quality.sample_dialogues(ds, 5, seed=7, corpus="x")
    assert [d.id for d in a] == [d.id for d in quality.sample_dialogues(ds, 5, seed=7, corpus="x")]
    assert [d.id for d in a] != [d.id for d in quality.sample_dialogues(ds, 5, seed=7, corpus="y")]
    assert len(quality.sample_dialogues(ds[:3], 5, seed=7, corpus="x")) == 3


# ----------------------------------------------------------------------------- a judge run
def _judge_handler(calls: dict):
    """Answers like a judge: 'bad' dialogues get prose the first time, fenced JSON after."""

    def handler(req):
        assert req["messages"][0]["role"] == "system" and "safety" in req["messages"][0]["content"]
        text = req["messages"][-1]["content"]
        dialogue_id = re.search(r"病例(\w+)", text).group(1)
        calls[dialogue_id] = calls.get(dialogue_id, 0) + 1
        if dialogue_id.startswith("bad") and calls[dialogue_id] == 1:
            return "这段对话整体不错，我给 7 分。"
        if dialogue_id.startswith("never"):
            return '{"comprehensiveness": 3, "professionalism": 2, "authenticity": 2, "safety": 1}'
        score = 2 if dialogue_id.startswith("good") else 1
        return f'```json\n{{"comprehensiveness": {score}, "professionalism": 2, "authenticity": 3, "safety": 1}}\n```'

    return handler


def test_judge_run_retries_and_keeps_raw_answers(tmp_path, monkeypatch):
    from openai_server import serve

    from mi_llm.llm import api

    corpora = {
        "alpha": [
            dlg("good1", ("c", "病例good1 我失眠"), ("s", "你愿意说说吗？"), corpus="alpha"),
            dlg("bad1", ("c", "病例bad1 我焦虑"), ("s", "嗯。"), corpus="alpha"),
        ],
        "beta": [dlg("never1", ("c", "病例never1 我难过"), ("s", "为什么？"), corpus="beta")],
    }
    p = params.from_dict(
        {
            "name": "t",
            "quality": {"parse_retries": 1, "judge_sample": 2},
            "llm": {
                "provider": "remote",
                "model": "judge-test",
                "max_retries": 0,
                "cache_path": str(tmp_path / "cache.sqlite"),
            },
        }
    )
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    calls = {}
    with serve(_judge_handler(calls)) as url:
        p.llm.base_url = url
        with api.endpoint(p.llm) as ep:
            records, usage = quality.judge(ep, corpora, p)
        assert url.stats.count == 5  # good1 once, bad1 twice, never1 twice (then missing)
    assert usage["requests"] == 3 and usage["answers"] == 5 and usage["completion_tokens"] > 0
    by = {r["dialogue_id"]: r for r in records}
    assert by["good1"]["ok"] and by["good1"]["attempts"] == 1 and by["good1"]["total"] == 8
    assert by["bad1"]["ok"] and by["bad1"]["attempts"] == 2 and by["bad1"]["total"] == 7
    assert (
        by["bad1"]["answers"][0] == "这段对话整体不错，我给 7 分。"
        and len(by["bad1"]["answers"]) == 2
    )
    assert not by["never1"]["ok"] and by["never1"]["scores"] is None
    assert "outside 0..2" in by["never1"]["error"] and len(by["never1"]["answers"]) == 2
    assert all(r["model"] == "judge-test" and r["prompt_version"] == "judge_v2" for r in records)

    stats = quality.describe_all({k: (v, {"n_bad": 0}) for k, v in corpora.items()})
    ranked = quality.rank(stats, records, top_k=1, bootstrap=200, seed=p.seed)
    out = quality.write_artifacts(tmp_path / "01", ranked, records)
    back = pd.read_csv(out[0])
    assert list(back["corpus"]) == ["alpha", "beta"] and back["total"].iloc[0] == 7.5
    assert list(back["selected"]) == [True, False] and math.isnan(back["total"].iloc[1])
    lines = [json.loads(x) for x in out[1].read_text(encoding="utf-8").splitlines()]
    assert sum(len(x["answers"]) for x in lines) == 5  # every raw answer kept

    # a re-run is answered from the cache: no new request reaches the server
    with serve(_judge_handler({})) as url2:
        p.llm.base_url = url2
        with api.endpoint(p.llm) as ep:
            again, usage2 = quality.judge(ep, corpora, p)
        assert url2.stats.count == 0
    assert usage2["cached"] == 3 and usage2["api_calls"] == 0
    assert [r["answers"] for r in again] == [r["answers"] for r in records]


def test_judge_v2_sends_its_worked_examples_as_chat_turns():
    from mi_llm.data import schema

    d = schema.Dialogue(
        "x", "t", [schema.Turn("client", "我很累。"), schema.Turn("counselor", "听起来你很辛苦。")]
    )
    msgs, _ = quality.judge_messages(d, quality.prompt_template("judge_v2"), 1000)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    for m in msgs[2:5:2]:  # the examples answer in exactly the form parse_judgement reads
        assert set(quality.parse_judgement(m["content"])) == set(quality.CRITERIA)
    assert "听起来你很辛苦" in msgs[-1]["content"]
