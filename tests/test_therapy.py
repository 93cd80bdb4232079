"""Therapy-pipeline response metrics on hand-made replies."""

import pandas as pd
import pytest

from mi_llm.data import schema
from mi_llm.eval import therapy


def test_sentences_lengths_and_question_marks():
    assert therapy.sentences("你好。我很好！！你呢？3.5分\n好的") == 5  # 3.5 is not split
    assert therapy.sentences("Hello there. How are you?") == 2
    assert therapy.sentences("。。") == 0 and therapy.sentences("") == 0
    assert therapy.length("你 好\n吗") == 3
    assert therapy.question_marks("你好吗？真的?") == 2


def test_sentiment_distance_of_english_replies_by_hand():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    ref, reply = "That sounds really hard, and you handled it well.", "You are wrong about this."
    gens = [
        {
            "model": "m",
            "variant": "base",
            "dialogue_id": "d",
            "round": 0,
            "topic": None,
            "messages": [],
            "reference": ref,
            "reply": reply,
        }
    ]
    row = therapy.therapy_metrics(gens).set_index("variant").loc["base"]
    c1, c2 = vader.polarity_scores(reply)["compound"], vader.polarity_scores(ref)["compound"]
    assert row["sentiment_distance"] == pytest.approx(abs((c1 + 1) / 2 - (c2 + 1) / 2))


def test_sentiment_language_choice_and_scale():
    assert schema.cjk_share("我很好 ok") == pytest.approx(3 / 5)
    en_pos, en_neg = (
        therapy.sentiment("I am very happy today"),
        therapy.sentiment("I feel terrible and sad"),
    )
    assert 0.5 < en_pos <= 1 and 0 <= en_neg < 0.5  # VADER compound mapped to 0..1
    zh = therapy.sentiment("我今天很开心")
    assert 0.5 < zh <= 1  # snownlp
    assert therapy.sentiment("...") == 0.5


def test_client_name_rule():
    hist = [
        {"role": "assistant", "content": "我叫张老师"},
        {"role": "user", "content": "你好，我叫王小明，今年二十岁"},
    ]
    assert therapy.client_name(hist) == "王小明"  # the counselor's own name is not the client's
    assert therapy.client_name([{"role": "user", "content": "Hi, my name is Anna and I"}]) == "Anna"
    assert (
        therapy.client_name([{"role": "user", "content": "我叫李华今年二十岁"}]) is None
    )  # ambiguous end
    assert therapy.uses_name("小明，你觉得呢", "王小明")
    assert not therapy.uses_name("你觉得呢", "王小明")


def _gen(variant, reply, ref, topic="焦虑", did="d1", rnd=0, name=True):
    user = "我叫王小明，最近很焦虑。" if name else "最近很焦虑。"
    return {
        "model": "m",
        "variant": variant,
        "dialogue_id": did,
        "round": rnd,
        "topic": topic,
        "messages": [{"role": "user", "content": user}],
        "reference": ref,
        "reply": reply,
    }


def test_therapy_metrics_hand_made():
    ref = (
        "小明，听起来你很焦虑。能多说一些吗？"  # 18 chars, 2 sentences, 1 question mark, uses name
    )
    gens = [
        _gen(
            "base", "你应该去看医生？你要放松？你要睡觉？", ref
        ),  # 18 chars, 3 sentences, 3 ?, no name
        _gen("finetuned", "小明，你很焦虑。", ref),  # 8 chars, 1 sentence, no ?, uses name
        _gen("base", "好的。", "我明白。", topic=None, did="d2", name=False),
        _gen("finetuned", "我明白你的意思。", "我明白。", topic=None, did="d2", name=False),
    ]
    t = therapy.therapy_metrics(gens).set_index(["category", "variant"])
    base, ft, refrow = (
        t.loc[("焦虑", "base")],
        t.loc[("焦虑", "finetuned")],
        t.loc[("焦虑", "reference")],
    )
    assert base["mean_abs_length_diff"] == 0 and ft["mean_abs_length_diff"] == 10
    assert base["mean_abs_sentence_diff"] == 1 and ft["mean_abs_sentence_diff"] == 1
    assert (base["question_replies"], base["question_marks"]) == (1, 3)
    assert (ft["question_replies"], ft["question_marks"]) == (0, 0)
    assert (refrow["question_replies"], refrow["question_marks"]) == (1, 1)
    assert base["name_mismatch"] == 1 and ft["name_mismatch"] == 0 and refrow["named_rounds"] == 1
    # independently: snownlp's positive probability of both Chinese texts, straight from snownlp
    from snownlp import SnowNLP

    dist = abs(SnowNLP("小明，你很焦虑。").sentiments - SnowNLP(ref).sentiments)
    assert ft["sentiment_distance"] == pytest.approx(dist) and dist > 0.01
    assert t.loc[("overall", "reference"), "n"] == 1  # no topic -> "overall"
    assert t.loc[("all", "base"), "n"] == 2  # the pooled row
    assert t.loc[("overall", "finetuned"), "mean_abs_length_diff"] == 4


def test_therapy_metrics_are_rates_with_dialogue_cis():
    ref = "小明，听起来你很焦虑。能多说一些吗？"
    gens = [
        _gen("base", "你应该去看医生？你要放松？你要睡觉？", ref),  # 3 question marks, no name
        _gen("base", "好的。", "我明白。", topic="失眠", did="d2", name=False),
    ]
    t = therapy.therapy_metrics(gens, bootstrap=2000, seed=0).set_index(["category", "variant"])
    pooled = t.loc[("all", "base")]
    # over the 2 replies of both categories, not the sum of the categories' rows
    assert pooled["question_replies"] == 0.5 and pooled["question_marks"] == 1.5
    assert pooled["name_mismatch"] == 1.0 and pooled["named_rounds"] == 1  # per named round
    assert (pooled["n"], pooled["n_dialogues"]) == (2, 2)
    # by hand: resampling the two dialogues (3 and 0 question marks) gives 3, 1.5 or 0 per reply
    assert (pooled["question_marks_ci_low"], pooled["question_marks_ci_high"]) == (0.0, 3.0)
    assert pd.isna(t.loc[("all", "reference"), "mean_abs_length_diff_ci_low"])
