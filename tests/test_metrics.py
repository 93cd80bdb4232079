"""BLEU-4 / ROUGE on hand-computed cases, bootstrap CIs and the paired test."""

import math

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from mi_llm import metrics


def test_bleu4_chinese_characters_hand_computed():
    # hyp 我今天很难过 vs ref 我今天很开心 (characters): 1-4-gram precisions 4/6, 3/5, 2/4, 1/3, BP = 1
    expected = 100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu4("我今天很难过", "我今天很开心") == pytest.approx(expected)  # 50.81
    assert metrics.bleu4("我今天很开心", "我今天很开心") == pytest.approx(100.0)


def test_bleu4_smoothing_method3_and_brevity_penalty_hand_computed():
    # hyp 我很开心 (4 chars) vs ref 我今天很开心 (6): precisions 4/4, 2/3, 1/2 and 0/1 -> method 3
    # replaces the first zero count by 1/(2^1 * 1); brevity penalty exp(1 - 6/4)
    expected = 100 * math.exp(1 - 6 / 4) * (1 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25
    assert metrics.bleu4("我很开心", "我今天很开心") == pytest.approx(expected)  # 38.75


def test_rouge_chinese_on_jieba_words_where_the_default_tokenizer_scores_zero():
    # jieba: 我/今天/很/难过 vs 我/今天/很/开心 -> R1 3/4, R2 2/3 (我今天, 今天很), RL LCS 3/4
    r = metrics.rouge("我今天很难过", "我今天很开心")
    assert r["rouge1"] == pytest.approx(75.0)
    assert r["rouge2"] == pytest.approx(200 / 3)
    assert r["rougeL"] == pytest.approx(75.0)
    naive = rouge_scorer.RougeScorer(["rouge1"]).score("我今天很开心", "我今天很难过")
    assert naive["rouge1"].fmeasure == 0.0  # why we pass our own tokenizer


def test_mixed_text_and_punctuation():
    assert metrics.bleu_tokens("I feel OK, 3.5 分。Don't！") == ["i", "feel", "ok", "3.5", "分", "don't"]
    assert metrics.rouge_tokens("我今天很开心，OK？") == ["我", "今天", "很", "开心", "ok"]
    # punctuation alone does not change a score; English words count as whole words
    assert metrics.rouge("我今天很开心。", "我今天很开心！")["rouge1"] == pytest.approx(100.0)
    assert metrics.bleu4("我很好，thank you!", "我很好 thank you") == pytest.approx(100.0)
    # hyp i/feel/good/today vs ref i/feel/bad/today: R1 = 3/4
    assert metrics.rouge("I feel good today", "I feel bad today")["rouge1"] == pytest.approx(75.0)
    assert metrics.bleu4("", "我今天很开心") == 0.0
    assert metrics.rouge("", "我今天很开心")["rouge1"] == 0.0


def _gens():
    rows = []
    replies = {"base": ["你好", "我不知道", "今天天气", "嗯"],
               "finetuned": ["我今天很难过", "听起来你很难过", "你愿意多说一些吗", "我今天很开心"]}
    refs = ["我今天很开心", "听起来你很难过", "你愿意多说说吗", "我今天很开心"]
    for v, rs in replies.items():
        for i, (h, r) in enumerate(zip(rs, refs)):
            rows.append({"model": "m", "variant": v, "dialogue_id": f"d{i // 2}", "round": i % 2,
                         "topic": "t", "reply": h, "reference": r, "messages": []})
    return rows


def test_score_means_and_bootstrap_ci():
    gens = _gens()
    table = metrics.score(gens, bootstrap=500, seed=1)
    assert list(table["variant"]) == ["base", "finetuned"]
    assert set(table.columns) >= {"bleu4", "bleu4_ci_low", "bleu4_ci_high", "rougeL_ci_high", "n"}
    ft = table.set_index("variant").loc["finetuned"]
    per = [metrics.bleu4(g["reply"], g["reference"]) for g in gens if g["variant"] == "finetuned"]
    assert ft["bleu4"] == pytest.approx(np.mean(per))
    assert ft["bleu4_ci_low"] <= ft["bleu4"] <= ft["bleu4_ci_high"]
    assert min(per) <= ft["bleu4_ci_low"] and ft["bleu4_ci_high"] <= max(per)
    assert ft["n"] == 4


def test_bootstrap_ci_constant_and_spread():
    assert metrics.bootstrap_ci([3.0] * 10) == (3.0, 3.0)
    lo, hi = metrics.bootstrap_ci(np.arange(100.0), n_boot=2000, seed=0)
    # the mean of 0..99 is 49.5 with standard error ~2.9: the 95% CI is about 49.5 +- 5.7
    assert 42 < lo < 46 and 53 < hi < 57


def test_paired_test_hand_made():
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ft = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]  # every difference positive: W- = 0
    res = metrics.paired_test(base, ft, n_boot=500)
    assert res["mean_diff"] == pytest.approx(3.5)
    assert res["wilcoxon_stat"] == 0.0
    assert res["p_value"] == pytest.approx(2 / 2**6)  # exact two-sided: 2 of 64 sign patterns
    assert res["diff_ci_low"] > 0
    same = metrics.paired_test(base, base)
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(ValueError):
        metrics.paired_test([1.0], [1.0, 2.0])


def test_paired_tests_table_pairs_rounds():
    table = metrics.paired_tests(_gens(), bootstrap=200)
    assert list(table["metric"]) == metrics.METRICS
    row = table.set_index("metric").loc["bleu4"]
    assert row["n"] == 4 and row["mean_diff"] > 0  # the fine-tuned replies are closer here
    scores = metrics.reply_scores(_gens())
    pd.testing.assert_frame_equal(metrics.paired_tests(scores, bootstrap=200), table)
