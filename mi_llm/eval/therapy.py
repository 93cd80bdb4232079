"""Response metrics of the therapy fine-tuning pipeline, per category, for base, fine-tuned and reference.

Per (model, category, variant) with variant in {base, finetuned, reference} (those present):
- mean absolute length difference to the reference, in characters (whitespace excluded);
- mean absolute sentence-count difference; a sentence ends at 。！？!?. or a newline (a run of them
  counts once, a "." between two digits as in "3.5" does not end one, and a segment without any
  letter, digit or CJK character is not a sentence);
- sentiment distance |s(reply) - s(reference)| on one 0..1 scale: snownlp's positive probability for
  Chinese, VADER's compound mapped by (c + 1) / 2 for English; a text is Chinese when at least half of
  its CJK + Latin letters are CJK; text with neither scores a neutral 0.5;
- the share of replies with a question (at least one ? or full-width ？) and question marks per reply;
- name-usage mismatch per named round: of the rounds where the client's name is known, the share
  where exactly one of reply and reference contains it.
  The name is what the client calls themself in the gold history ("我叫X" / "我的名字是X" /
  "我名叫X" / "叫我X" with X two or three CJK characters up to punctuation or a space; English "my
  name is X" / "call me X" / "name's X" with X capitalised); a Chinese name of three characters also
  counts as used when its last two characters appear (the usual way to address someone). Rounds
  without a known name cannot mismatch; `named_rounds` says how many had one.
Every figure is a rate (per reply; name mismatches per named round), beside its n (replies),
n_dialogues and a 95% CI that resamples dialogues (rounds of one dialogue are not independent).
The category is the dialogue's topic when the data has one, "overall" otherwise; an "all" row per
model and variant pools the replies of every category (a rate over all of them, never a sum).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mi_llm.data.schema import CJK_CHARS, cjk_share
from mi_llm.stats import bootstrap_ci

_CJK = CJK_CHARS
_SENTENCE_END = re.compile(r"(?:[。！？!?\n]|(?<!\d)\.|\.(?!\d))+")
_CONTENT = re.compile(rf"[{_CJK}A-Za-z0-9]")
_ZH_NAME = re.compile(
    rf"(?:我叫|我的名字是|我的名字叫|我名叫|叫我)([{_CJK}]{{2,3}})(?=[^{_CJK}]|$)"
)
_EN_NAME = re.compile(r"\b(?:[Mm]y name is|[Cc]all me|[Nn]ame's)\s+([A-Z][a-z]+)")
_NOT_NAMES = {"什么", "这个", "那个", "自己", "一个", "他们", "我们", "你们"}
# therapy_metrics.csv: these id columns, then _summary's columns; COMPARISON: the comparison set
# of the therapy pipeline, the columns stage 05's figure draws
THERAPY_IDS = ["model", "category", "variant"]
COMPARISON = [
    "mean_abs_length_diff",
    "mean_abs_sentence_diff",
    "sentiment_distance",
    "question_replies",
    "question_marks",
    "name_mismatch",
]
THERAPY_COLUMNS = [
    *THERAPY_IDS,
    "n",
    "n_dialogues",
    "mean_length",
    "mean_sentences",
    "mean_sentiment",
    "mean_abs_length_diff",
    "mean_abs_sentence_diff",
    "sentiment_distance",
    "question_replies",
    "question_marks",
    "named_rounds",
    "name_mismatch",
    *(f"{m}_{end}" for m in COMPARISON for end in ("ci_low", "ci_high")),
]


def length(text: str) -> int:
    """Characters of the text, whitespace excluded."""
    return len(re.sub(r"\s", "", text))


def sentences(text: str) -> int:
    """Number of sentences (split on 。！？!?. and newlines; see the module docstring)."""
    return sum(1 for seg in _SENTENCE_END.split(text) if _CONTENT.search(seg))


def question_marks(text: str) -> int:
    """Number of ? and full-width ？ in the text."""
    return text.count("?") + text.count("？")


_VADER = None


def sentiment(text: str) -> float:
    """Sentiment on 0 (negative) .. 1 (positive): snownlp for Chinese, VADER for English."""
    global _VADER
    if not _CONTENT.search(text):
        return 0.5
    if cjk_share(text) >= 0.5:
        from snownlp import SnowNLP

        return float(SnowNLP(text).sentiments)
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return (_VADER.polarity_scores(text)["compound"] + 1) / 2


def client_name(messages: list[dict]) -> str | None:
    """The client's self-introduced name in the history (user turns), or None (see module rule)."""
    for m in messages:
        if m.get("role") != "user":
            continue
        for rx in (_ZH_NAME, _EN_NAME):
            for name in rx.findall(m.get("content", "")):
                if name not in _NOT_NAMES:
                    return name
    return None


def uses_name(text: str, name: str | None) -> bool:
    """Whether the text addresses `name` (a 3-character Chinese name also by its last two)."""
    if not name:
        return False
    if name in text:
        return True
    return len(name) == 3 and re.fullmatch(rf"[{_CJK}]+", name) is not None and name[1:] in text


def _features(text: str, reference: str, name: str | None) -> dict:
    return {
        "length": length(text),
        "sentences": sentences(text),
        "sentiment": sentiment(text),
        "question_marks": question_marks(text),
        "uses_name": uses_name(text, name),
        "len_diff": abs(length(text) - length(reference)),
        "sent_diff": abs(sentences(text) - sentences(reference)),
    }


def features(generations) -> pd.DataFrame:
    """One row per (model, variant, dialogue, round): the per-reply features behind the table."""
    gens = list(
        generations.to_dict("records") if isinstance(generations, pd.DataFrame) else generations
    )
    if not gens:
        raise ValueError("no generations for the therapy metrics")
    rows, seen = [], set()
    for g in gens:
        topic = g.get("topic")
        category = topic if isinstance(topic, str) and topic.strip() else "overall"
        base = {
            "model": g["model"],
            "category": category,
            "dialogue_id": g["dialogue_id"],
            "round": g["round"],
        }
        name = client_name(g.get("messages") or [])
        ref_feats = _features(g["reference"], g["reference"], name)
        rows.append(
            {
                **base,
                "variant": g["variant"],
                "has_name": name is not None,
                **_features(g["reply"], g["reference"], name),
                "sentiment_distance": None,
                "ref_sentiment": ref_feats["sentiment"],
                "ref_uses_name": ref_feats["uses_name"],
            }
        )
        key = (g["model"], g["dialogue_id"], g["round"])
        if key not in seen:  # one reference row per round, whatever the number of variants
            seen.add(key)
            rows.append(
                {
                    **base,
                    "variant": "reference",
                    "has_name": name is not None,
                    **ref_feats,
                    "ref_sentiment": ref_feats["sentiment"],
                    "ref_uses_name": ref_feats["uses_name"],
                }
            )
    df = pd.DataFrame(rows)
    df["sentiment_distance"] = (df["sentiment"] - df["ref_sentiment"]).abs()
    df["name_mismatch"] = df["has_name"] & (df["uses_name"] != df["ref_uses_name"])
    return df


_PER_REPLY = {  # COMPARISON column -> the per-reply value whose mean it is
    "mean_abs_length_diff": "len_diff",
    "mean_abs_sentence_diff": "sent_diff",
    "sentiment_distance": "sentiment_distance",
    "question_replies": "has_question",
    "question_marks": "question_marks",
    "name_mismatch": "name_mismatch",
}


def _summary(g: pd.DataFrame, bootstrap: int, seed: int) -> dict:
    is_ref = (g["variant"] == "reference").all()
    g = g.assign(has_question=g["question_marks"] > 0)
    named = g[g["has_name"]]
    out = {
        "n": len(g),
        "n_dialogues": int(g["dialogue_id"].nunique()),
        "mean_length": float(g["length"].mean()),
        "mean_sentences": float(g["sentences"].mean()),
        "mean_sentiment": float(g["sentiment"].mean()),
        "named_rounds": len(named),
    }
    for m, col in _PER_REPLY.items():
        rows = named if m == "name_mismatch" else g  # mismatches: per round with a known name
        undefined = rows.empty or (is_ref and m not in ("question_replies", "question_marks"))
        x = rows[col].astype(float)
        out[m] = np.nan if undefined else float(x.mean())
        lo, hi = (
            (np.nan, np.nan)
            if undefined
            else bootstrap_ci(x, bootstrap, seed, clusters=rows["dialogue_id"])
        )
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = lo, hi
    return out


def therapy_metrics(generations, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model, category and variant (base/finetuned/reference): therapy_metrics.csv."""
    f = features(generations)
    f["dialogue_id"] = f["dialogue_id"].astype(str)
    order = {s: i for i, s in enumerate(["base", "finetuned", "conditioned", "reference"])}
    rows = []
    for model, fm in f.groupby("model", sort=False):
        cats = list(dict.fromkeys(fm["category"]))
        for cat in cats + (["all"] if len(cats) > 1 else []):
            fc = fm if cat == "all" else fm[fm["category"] == cat]
            for variant, g in sorted(fc.groupby("variant"), key=lambda kv: order.get(kv[0], 9)):
                row = dict(zip(THERAPY_IDS, (model, cat, variant)))
                rows.append({**row, **_summary(g, bootstrap, seed)})
    return pd.DataFrame(rows, columns=THERAPY_COLUMNS)
