"""Automatic reply metrics of stage 04: BLEU-4 on characters and ROUGE-1/2/L on jieba words.

Both are sentence-level, on a 0-100 scale, averaged over replies, with bootstrap 95% CIs per
model/variant and a paired test of fine-tuned against base on the same rounds.

Tokenisation (mixed Chinese/English, decided here once for both metrics):
- text is lower-cased; CJK characters and runs of Latin letters/digits are the content;
- BLEU-4: every CJK character is a token, every Latin/digit run ("feel", "3.5", "don't") is one
  token. ROUGE: jieba's words (it keeps Latin runs whole), dropping whitespace-only tokens;
- punctuation (ASCII and full-width) and whitespace are dropped in both: "，" and "。" are the most
  frequent characters of Chinese replies, and matching them says nothing about the content.
rouge-score's own tokenizer keeps only [a-z0-9] and so scores any Chinese pair as 0; we pass ours.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

METRICS = ["bleu4", "rouge1", "rouge2", "rougeL"]
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_BLEU_TOKEN = re.compile(rf"[{_CJK}]|[a-z0-9]+(?:['’.][a-z0-9]+)*")
_CONTENT = re.compile(rf"[{_CJK}a-z0-9]")


def bleu_tokens(text: str) -> list[str]:
    """BLEU tokens: CJK characters one by one, Latin/digit runs whole, punctuation dropped."""
    return _BLEU_TOKEN.findall(text.lower())


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokens: jieba words of the lower-cased text holding at least one CJK/Latin/digit."""
    import jieba

    return [w for w in jieba.lcut(text.lower()) if _CONTENT.search(w)]


class _JiebaTokenizer:
    """The tokenizer interface rouge-score expects (an object with .tokenize(text))."""

    def tokenize(self, text):
        return rouge_tokens(text)


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_JiebaTokenizer())
    return _SCORER


def bleu4(hypothesis: str, reference: str) -> float:
    """Sentence BLEU-4 (0-100) on characters, nltk smoothing method 3; 0 for an empty side."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = bleu_tokens(hypothesis), bleu_tokens(reference)
    if not hyp or not ref:
        return 0.0
    with warnings.catch_warnings():  # nltk warns when a short reply has no 4-grams at all
        warnings.simplefilter("ignore")
        return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


def rouge(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0-100) on jieba words: {rouge1, rouge2, rougeL}."""
    scores = _scorer().score(reference, hypothesis)  # rouge-score's order is (target, prediction)
    return {k: 100.0 * v.fmeasure for k, v in scores.items()}


def reply_scores(generations) -> pd.DataFrame:
    """One row per generation record with bleu4, rouge1, rouge2, rougeL (0-100)."""
    df = pd.DataFrame(list(generations) if not isinstance(generations, pd.DataFrame) else generations)
    if df.empty:
        raise ValueError("no generations to score")
    missing = {"model", "variant", "dialogue_id", "round", "reply", "reference"} - set(df.columns)
    if missing:
        raise ValueError(f"generation records lack field(s) {sorted(missing)}")
    rows = [{"bleu4": bleu4(h, r), **rouge(h, r)} for h, r in zip(df["reply"], df["reference"])]
    keep = [c for c in ["model", "variant", "dialogue_id", "round", "topic"] if c in df.columns]
    return pd.concat([df[keep].reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def _scores(generations) -> pd.DataFrame:
    if isinstance(generations, pd.DataFrame) and set(METRICS) <= set(generations.columns):
        return generations
    return reply_scores(generations)


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (NaN, NaN when empty)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # n_boot resampled means
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def score(generations, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean metrics per model/variant with bootstrap 95% CIs: metrics.csv."""
    scores = _scores(generations)
    rows = []
    for (model, variant), g in scores.groupby(["model", "variant"], sort=False):
        row = {"model": model, "variant": variant}
        for m in METRICS:
            lo, hi = bootstrap_ci(g[m], bootstrap, seed)
            row.update({m: float(g[m].mean()), f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append({**row, "n": len(g)})
    return pd.DataFrame(rows)


def paired_test(base, finetuned, n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired comparison: mean difference (finetuned - base), its bootstrap CI, Wilcoxon test."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(base, dtype=float), np.asarray(finetuned, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired test needs two equal, non-empty samples, got {a.size} and {b.size}")
    d = b - a
    lo, hi = bootstrap_ci(d, n_boot, seed)
    if np.all(d == 0):  # no difference at all: scipy cannot rank zeros
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(b, a, zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
    return {"n": int(a.size), "base_mean": float(a.mean()), "finetuned_mean": float(b.mean()),
            "mean_diff": float(d.mean()), "diff_ci_low": lo, "diff_ci_high": hi,
            "wilcoxon_stat": stat, "p_value": p}


def paired_tests(generations, bootstrap: int = 1000, seed: int = 0,
                 base: str = "base", finetuned: str = "finetuned") -> pd.DataFrame:
    """Per model and metric, finetuned vs base on the rounds both answered: paired_tests.csv."""
    scores = _scores(generations)
    key = ["model", "dialogue_id", "round"]
    rows = []
    for model, g in scores.groupby("model", sort=False):
        a = g[g["variant"] == base].set_index(key[1:])
        b = g[g["variant"] == finetuned].set_index(key[1:])
        common = a.index.intersection(b.index)
        if len(common) == 0:
            continue
        for m in METRICS:
            res = paired_test(a.loc[common, m], b.loc[common, m], bootstrap, seed)
            rows.append({"model": model, "metric": m, "test": "wilcoxon signed-rank", **res})
    return pd.DataFrame(rows)
