"""BLEU-4 / ROUGE on hand-computed cases, dialogue-clustered bootstrap CIs and the paired test."""

import math
import random

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from mi_llm import stats
from mi_llm.eval import metrics


# ----------------------------------------------------------------------------- the raw recipe
def test_bleu4_raw_characters_keep_punctuation_hand_computed():
    # hyp 我今天很难过。 vs ref 我今天很开心。 (7 characters each, 。 a token like any other):
    # 1-grams 我今天很。 5/7; 2-grams 我今 今天 天很 3/6; 3-grams 我今天 今天很 2/5; 4-grams 1/4; BP 1
    expected = 100 * (5 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert metrics.bleu4("我今天很难过。", "我今天很开心。") == pytest.approx(expected)  # 47.3
    assert metrics.bleu4("我今天很开心", "我今天很开心") == pytest.approx(100.0)


def test_bleu4_smoothing_method3_and_brevity_penalty_hand_computed():
    # hyp 我很开心 (4 chars) vs ref 我今天很开心 (6): precisions 4/4, 2/3, 1/2 and 0/1 -> method 3
    # replaces the first zero count by 1/(2^1 * 1); brevity penalty exp(1 - 6/4)
    expected = 100 * math.exp(1 - 6 / 4) * (1 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25
    assert metrics.bleu4("我很开心", "我今天很开心") == pytest.approx(expected)  # 38.75


def test_bleu4_raw_keeps_case():
    # "OK" vs "ok": no character in common when case is kept; content scoring lower-cases
    assert metrics.bleu4("OK", "ok") == 0.0
    assert metrics.bleu4("OK", "ok", scoring="content") == metrics.bleu4("ok", "ok", "content") > 0
    assert metrics.bleu4("", "我今天很开心") == 0.0 and metrics.bleu4("我", "") == 0.0


def test_rouge_raw_is_rouge_chinese_on_jieba_words_hand_computed():
    # jieba: 我/今天/很/难过/。 vs 我/今天/很/开心/！ -> R1 3/5; bigrams 我今天 今天很 of 4 -> R2 2/4;
    # LCS 我 今天 很 -> RL 3/5 (rouge-chinese reports F with a 1e-8 epsilon)
    r = metrics.rouge("我今天很难过。", "我今天很开心！")
    assert r["rouge1"] == pytest.approx(60.0, abs=1e-5)
    assert r["rouge2"] == pytest.approx(50.0, abs=1e-5)
    assert r["rougeL"] == pytest.approx(60.0, abs=1e-5)
    # case kept: i/feel/good vs I/feel/good -> 2 of 3 words
    assert metrics.rouge("i feel good", "I feel good")["rouge1"] == pytest.approx(200 / 3, abs=1e-5)
    assert metrics.rouge("", "我今天很开心") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    naive = rouge_scorer.RougeScorer(["rouge1"]).score("我今天很开心", "我今天很难过")
    assert naive["rouge1"].fmeasure == 0.0  # why rouge-score's own tokenizer is never used


def test_content_scoring_is_the_named_option():
    assert metrics.bleu_tokens("I feel OK, 3.5 分。Don't！", "content") == [
        "i",
        "feel",
        "ok",
        "3.5",
        "分",
        "don't",
    ]
    assert metrics.rouge_tokens("我今天很开心，OK？", "content") == [
        "我",
        "今天",
        "很",
        "开心",
        "ok",
    ]
    # punctuation alone does not change a content score; it does change the raw one
    assert metrics.rouge("我今天很开心。", "我今天很开心！", "content")["rouge1"] == pytest.approx(
        100.0
    )
    assert metrics.rouge("我今天很开心。", "我今天很开心！")["rouge1"] == pytest.approx(
        80.0, abs=1e-5
    )
    # hyp 我今天很难过 vs ref 我今天很开心 on content characters: 4/6, 3/5, 2/4, 1/3
    expected = 100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu4("我今天很难过。", "我今天很开心。", "content") == pytest.approx(expected)
    with pytest.raises(ValueError, match="scoring"):
        metrics.bleu4("a", "a", scoring="chars")


def _gens():
    rows = []
    replies = {
        "base": ["你好", "我不知道", "今天天气", "嗯"],
        "finetuned": ["我今天很难过", "听起来你很难过", "你愿意多说一些吗", "我今天很开心"],
    }
    refs = ["我今天很开心", "听起来你很难过", "你愿意多说说吗", "我今天很开心"]
    for v, rs in replies.items():
        for i, (h, r) in enumerate(zip(rs, refs)):
            rows.append(
                {
                    "model": "m",
                    "variant": v,
                    "dialogue_id": f"d{i // 2}",
                    "round": i % 2,
                    "topic": "t",
                    "reply": h,
                    "reference": r,
                    "messages": [],
                }
            )
    return rows


def test_reply_scores_with_content_columns():
    s = metrics.reply_scores(_gens(), content=True)
    assert set(metrics.CONTENT) <= set(s.columns)
    row = s.iloc[4]  # finetuned 我今天很难过 vs 我今天很开心
    assert row["bleu4"] == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    table = metrics.score(s, bootstrap=50)
    assert {"bleu4_content", "rougeL_content_ci_high"} <= set(table.columns)


# ----------------------------------------------------------------------------- statistics
def test_score_means_and_dialogue_bootstrap_ci():
    gens = _gens()
    table = metrics.score(gens, bootstrap=500, seed=1)
    assert list(table["variant"]) == ["base", "finetuned"]
    ft = table.set_index("variant").loc["finetuned"]
    per = [metrics.bleu4(g["reply"], g["reference"]) for g in gens if g["variant"] == "finetuned"]
    assert ft["bleu4"] == pytest.approx(np.mean(per))
    assert ft["n"] == 4 and ft["n_dialogues"] == 2
    assert list(table.columns[-3:]) == ["n", "n_dialogues", "too_small"]
    assert ft["too_small"]  # 2 dialogues: the CI is not to be read
    assert metrics.too_small(4) and not metrics.too_small(5)
    # two dialogues: a resample is (d0, d0), (d0, d1) or (d1, d1), so the CI ends are the two
    # dialogues' own means (each drawn twice with probability 1/4 > 2.5%)
    d0, d1 = np.mean(per[:2]), np.mean(per[2:])
    assert (ft["bleu4_ci_low"], ft["bleu4_ci_high"]) == pytest.approx((min(d0, d1), max(d0, d1)))


def test_cluster_bootstrap_resamples_dialogues_not_rounds():
    # dialogue a: 10 rounds of 0, dialogue b: 10 rounds of 10. Resampling rounds gives a narrow CI
    # around 5; resampling the 2 dialogues can draw a twice (p = 1/4): the CI is [0, 10]
    x = [0.0] * 10 + [10.0] * 10
    g = ["a"] * 10 + ["b"] * 10
    assert stats.bootstrap_ci(x, 2000, seed=0, clusters=g) == (0.0, 10.0)
    lo, hi = stats.bootstrap_ci(x, 2000, seed=0)
    assert 2 < lo < 5 < hi < 8
    # unequal sizes: the statistic is the mean over all drawn rounds, a (1 round of 0) with b
    # (3 rounds of 4): the draws give 0, 4 or 12/4 = 3
    lo, hi = stats.bootstrap_ci([0, 4, 4, 4], 2000, seed=0, clusters=["a", "b", "b", "b"])
    assert (lo, hi) == (0.0, 4.0)
    assert stats.bootstrap_ci([3.0] * 10) == (3.0, 3.0)


def test_paired_test_wilcoxon_on_dialogue_means():
    # 6 dialogues of 2 rounds; every dialogue's mean difference is positive: exact two-sided
    # p = 2 / 2^6 over dialogues (over the 12 rounds it would be 2 / 2^12)
    base = [1.0, 2.0] * 6
    ft = [b + d for b, d in zip(base, [1, 2, 3, 1, 2, 2, 4, 1, 1, 1, 5, 0])]
    dialogues = [i // 2 for i in range(12)]
    res = metrics.paired_test(base, ft, dialogues, bootstrap=500)
    assert res["mean_diff"] == pytest.approx(23 / 12)
    assert res["mean_b"] - res["mean_a"] == pytest.approx(res["mean_diff"])
    assert res["n"] == 12 and res["n_dialogues"] == 6 and res["too_small"] is False
    assert metrics.paired_test(base[:8], ft[:8], dialogues[:8])["too_small"] is True  # 4 dialogues
    assert res["estimate"].startswith("mean over rounds") and res["test_on"] == "per-dialogue means"
    assert res["wilcoxon_stat"] == 0.0
    assert res["p_value"] == pytest.approx(2 / 2**6)
    assert res["diff_ci_low"] > 0
    same = metrics.paired_test(base, base, dialogues)
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(ValueError):
        metrics.paired_test([1.0], [1.0, 2.0])


def test_paired_tests_match_rounds_when_reordered_and_dropped():
    gens = _gens()
    base = [g for g in gens if g["variant"] == "base"]
    ft = [g for g in gens if g["variant"] == "finetuned"][1:]  # d0 round 0 has no fine-tuned reply
    random.Random(3).shuffle(ft)
    table = metrics.paired_tests(base + ft, bootstrap=200).set_index("metric")
    # expected: match by (dialogue, round) by hand, three rounds in two dialogues
    by_key = {(g["dialogue_id"], g["round"]): g for g in base}
    diffs = {}
    for g in ft:
        b = by_key[(g["dialogue_id"], g["round"])]
        diffs[(g["dialogue_id"], g["round"])] = metrics.bleu4(
            g["reply"], g["reference"]
        ) - metrics.bleu4(b["reply"], b["reference"])
    assert table.loc["bleu4", "n"] == 3 and table.loc["bleu4", "n_dialogues"] == 2
    assert table["too_small"].all()  # paired_tests.csv: 2 dialogues, too small to read
    assert set(table.variant_a) == {"base"} and set(table.variant_b) == {"finetuned"}
    assert table.loc["bleu4", "mean_diff"] == pytest.approx(np.mean(list(diffs.values())))
    assert list(table.index) == metrics.METRICS
    pd.testing.assert_frame_equal(
        metrics.paired_tests(metrics.reply_scores(base + ft), bootstrap=200).set_index("metric"),
        table,
    )


def test_bootstrap_ci_properties():
    x = [3, 5, 6, 7, 7, 8, 9, 4]
    low, high = stats.bootstrap_ci(x, 1000, seed=1)
    assert low <= np.mean(x) <= high and low < high
    assert (low, high) == stats.bootstrap_ci(x, 1000, seed=1)  # deterministic by seed
    assert (low, high) != stats.bootstrap_ci(x, 1000, seed=2)
    assert stats.bootstrap_ci([5], 1000, seed=1) == (5.0, 5.0)  # a CI of one value: width 0
    assert all(math.isnan(v) for v in stats.bootstrap_ci([], 1000, seed=1))
    assert stats.bootstrap_ci([4, 4, 4], 200, seed=0) == (4.0, 4.0)


def test_cohen_kappa_known_table():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = (25*30 + 25*20) / 50^2 = 0.5, kappa = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(stats.cohen_kappa(["Q", "Q"], ["Q", "Q"]))


def test_cohen_kappa_equals_scikit_learn():
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    for n, labels in [(2, "ab"), (7, "abc"), (40, "QRSTU"), (300, "xy")]:
        a = rng.choice(list(labels), n).tolist()
        b = [x if rng.random() < 0.6 else rng.choice(list(labels)) for x in a]
        if len(set(a) | set(b)) > 1:
            assert stats.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert stats.cohen_kappa(["x", "x"], ["y", "y"]) == cohen_kappa_score(["x", "x"], ["y", "y"])
    with pytest.raises(ValueError, match="paired"):
        stats.cohen_kappa(["x"], ["x", "y"])
