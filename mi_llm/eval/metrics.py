"""Automatic reply metrics of stage 04: BLEU-4 and ROUGE-1/2/L as Chinese SFT papers report them.

The recipe (LLaMA-Factory's, which the paper's three models are trained with), scoring "raw":
- BLEU-4: nltk `sentence_bleu` with smoothing method 3 on `list(text)`: every character is a
  token, punctuation, spaces and case kept;
- ROUGE-1/2/L: the F score of rouge-chinese's `Rouge().get_scores` on the space-joined jieba words
  of the raw text;
- an empty side scores 0; both on a 0-100 scale, averaged over replies.
The option scoring "content" is a stricter reading, reported beside it where configured
(`evaluation.content_metrics`): lower-cased, punctuation and whitespace dropped, Latin/digit runs
whole for BLEU, jieba words with content for ROUGE (rouge-score with that tokenizer).

Rounds of one dialogue share its history and reference style, so the 95% CIs resample dialogues
(a cluster bootstrap), and the paired test of fine-tuned against base compares per-dialogue means
(Wilcoxon signed-rank) on the rounds both variants answered. A CI or test over fewer than
MIN_DIALOGUES dialogues carries `too_small: true` (a handful of dialogues gives a CI that can
exclude 0 by chance, and a signed-rank test that cannot reach significance).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from mi_llm.data.schema import CJK_CHARS
from mi_llm.stats import bootstrap_ci

METRICS = ["bleu4", "rouge1", "rouge2", "rougeL"]
SCORINGS = ("raw", "content")
CONTENT = [f"{m}_content" for m in METRICS]  # reply_scores' columns of the content scoring
SCORE_IDS = ["model", "variant"]  # metrics.csv's id columns (score_columns: all of its columns)
_CJK = CJK_CHARS
_BLEU_TOKEN = re.compile(rf"[{_CJK}]|[a-z0-9]+(?:['’.][a-z0-9]+)*")
_CONTENT = re.compile(rf"[{_CJK}a-z0-9]")
MIN_DIALOGUES = 5  # fewer independent dialogues than this: a CI or test too small to read
TOO_SMALL = f"n < {MIN_DIALOGUES} dialogues: too small to read"


def too_small(n_dialogues) -> bool:
    """Whether a CI or test over n_dialogues dialogues is too small to read (< MIN_DIALOGUES)."""
    return bool(n_dialogues < MIN_DIALOGUES)


# ----------------------------------------------------------------------------- tokens
def bleu_tokens(text: str, scoring: str = "raw") -> list[str]:
    """BLEU tokens: raw, the characters; content, CJK characters and Latin/digit runs, lower-cased."""
    _check(scoring)
    return list(text) if scoring == "raw" else _BLEU_TOKEN.findall(text.lower())


def rouge_tokens(text: str, scoring: str = "raw") -> list[str]:
    """ROUGE tokens: jieba words of the raw text (raw) or of the lower-cased text, content only."""
    import jieba

    _check(scoring)
    if scoring == "raw":
        return " ".join(jieba.cut(text)).split()  # what rouge-chinese sees after the space join
    return [w for w in jieba.lcut(text.lower()) if _CONTENT.search(w)]


def _check(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


class _JiebaTokenizer:
    """The tokenizer interface rouge-score expects (an object with .tokenize(text))."""

    def tokenize(self, text):
        return rouge_tokens(text, "content")


_SCORERS: dict = {}


def _content_scorer():
    if "content" not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS["content"] = rouge_scorer.RougeScorer(
            ["rouge1", "rouge2", "rougeL"], tokenizer=_JiebaTokenizer()
        )
    return _SCORERS["content"]


# ----------------------------------------------------------------------------- one reply
def bleu4(hypothesis: str, reference: str, scoring: str = "raw") -> float:
    """Sentence BLEU-4 (0-100), nltk smoothing method 3; raw: on list(text); 0 for an empty side."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = bleu_tokens(hypothesis, scoring), bleu_tokens(reference, scoring)
    if not hyp or not ref:
        return 0.0
    with warnings.catch_warnings():  # nltk warns when a short reply has no 4-grams at all
        warnings.simplefilter("ignore")
        return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


def rouge(hypothesis: str, reference: str, scoring: str = "raw") -> dict[str, float]:
    """ROUGE-1/2/L F (0-100): {rouge1, rouge2, rougeL}; raw: rouge-chinese on jieba words."""
    if scoring == "content":
        scores = _content_scorer().score(reference, hypothesis)  # order: (target, prediction)
        return {k: 100.0 * v.fmeasure for k, v in scores.items()}
    hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
    if not hyp or not ref:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    from rouge_chinese import Rouge

    s = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    return {
        "rouge1": 100.0 * s["rouge-1"]["f"],
        "rouge2": 100.0 * s["rouge-2"]["f"],
        "rougeL": 100.0 * s["rouge-l"]["f"],
    }


# ----------------------------------------------------------------------------- per reply
def reply_scores(generations, content: bool = False) -> pd.DataFrame:
    """One row per generation record: bleu4, rouge1, rouge2, rougeL (0-100), raw scoring.

    content: also the content-only scores, as bleu4_content, rouge1_content, ...
    """
    df = pd.DataFrame(
        list(generations) if not isinstance(generations, pd.DataFrame) else generations
    )
    if df.empty:
        raise ValueError("no generations to score")
    missing = {"model", "variant", "dialogue_id", "round", "reply", "reference"} - set(df.columns)
    if missing:
        raise ValueError(f"generation records lack field(s) {sorted(missing)}")
    rows = []
    for h, r in zip(df["reply"], df["reference"]):
        row = {"bleu4": bleu4(h, r), **rouge(h, r)}
        if content:
            c = {"bleu4": bleu4(h, r, "content"), **rouge(h, r, "content")}
            row.update({f"{k}_content": v for k, v in c.items()})
        rows.append(row)
    keep = [c for c in ["model", "variant", "dialogue_id", "round", "topic"] if c in df.columns]
    return pd.concat([df[keep].reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def _scores(generations) -> pd.DataFrame:
    if isinstance(generations, pd.DataFrame) and set(METRICS) <= set(generations.columns):
        return generations
    return reply_scores(generations)


def _metrics(scores: pd.DataFrame) -> list[str]:
    return [m for m in METRICS + CONTENT if m in scores.columns]


# ----------------------------------------------------------------------------- statistics
def score_columns(metrics) -> list[str]:
    """metrics.csv's columns for these metric names (METRICS, then CONTENT where scored)."""
    ci = [c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    return [*SCORE_IDS, *ci, "n", "n_dialogues"]


def score(generations, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean metrics per model/variant with 95% CIs resampling dialogues: metrics.csv (its
    score_columns, then too_small: n_dialogues < MIN_DIALOGUES)."""
    scores = _scores(generations)
    rows = []
    for (model, variant), g in scores.groupby(["model", "variant"], sort=False):
        row = {"model": model, "variant": variant}
        for m in _metrics(scores):
            lo, hi = bootstrap_ci(g[m], bootstrap, seed, clusters=g["dialogue_id"])
            row.update({m: float(g[m].mean()), f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        n_dialogues = int(g["dialogue_id"].nunique())
        rows.append(
            {**row, "n": len(g), "n_dialogues": n_dialogues, "too_small": too_small(n_dialogues)}
        )
    return pd.DataFrame(rows, columns=[*score_columns(_metrics(scores)), "too_small"])


def paired_test(base, finetuned, dialogues=None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Paired comparison, round by round: mean difference (b = finetuned - a = base), CI, Wilcoxon.

    Two estimates, each named in the result: `estimate` (mean_a, mean_b, mean_diff and its CI are
    means over rounds; the CI resamples dialogues) and `test_on` (the Wilcoxon signed-rank test
    compares per-dialogue means, since rounds of one dialogue are not independent).
    dialogues: the dialogue of each round; without it every round is its own dialogue.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(base, dtype=float), np.asarray(finetuned, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"paired test needs two equal, non-empty samples, got {a.size} and {b.size}"
        )
    groups = np.arange(a.size) if dialogues is None else np.asarray(list(dialogues), dtype=str)
    if groups.size != a.size:
        raise ValueError(f"{groups.size} dialogue labels for {a.size} rounds")
    d = b - a
    lo, hi = bootstrap_ci(d, bootstrap, seed, clusters=groups)
    per = pd.DataFrame({"g": groups, "a": a, "b": b}).groupby("g", sort=False).mean()
    da, db = per["a"].to_numpy(), per["b"].to_numpy()
    if np.all(db - da == 0):  # no difference at all: scipy cannot rank zeros
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(db, da, zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
    return {
        "estimate": "mean over rounds (b - a); CI resampling dialogues",
        "test_on": "per-dialogue means",
        "n": int(a.size),
        "n_dialogues": len(per),
        "too_small": too_small(len(per)),  # fewer than MIN_DIALOGUES: too small to read
        "mean_a": float(a.mean()),  # side a: `base`
        "mean_b": float(b.mean()),  # side b: `finetuned`; mean_diff = mean_b - mean_a
        "mean_diff": float(d.mean()),
        "diff_ci_low": lo,
        "diff_ci_high": hi,
        "wilcoxon_stat": stat,
        "p_value": p,
    }


def paired_tests(
    generations,
    bootstrap: int = 1000,
    seed: int = 0,
    base: str = "base",
    finetuned: str = "finetuned",
) -> pd.DataFrame:
    """Per model and metric, variant b (`finetuned`) vs variant a (`base`) on the rounds both
    answered: paired_tests.csv, whose variant_a / variant_b columns name the sides of mean_a,
    mean_b and mean_diff (b - a)."""
    scores = _scores(generations)
    key = ["dialogue_id", "round"]
    rows = []
    for model, g in scores.groupby("model", sort=False):
        a = g[g["variant"] == base]
        b = g[g["variant"] == finetuned]
        both = a.merge(b, on=key, suffixes=("_a", "_b"))  # matched by dialogue and round
        if both.empty:
            continue
        for m in _metrics(scores):
            res = paired_test(both[f"{m}_a"], both[f"{m}_b"], both["dialogue_id"], bootstrap, seed)
            rows.append(
                {
                    "model": model,
                    "variant_a": base,
                    "variant_b": finetuned,
                    "metric": m,
                    "test": "wilcoxon signed-rank on per-dialogue means",
                    **res,
                }
            )
    return pd.DataFrame(rows)
