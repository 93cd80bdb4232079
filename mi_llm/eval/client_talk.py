"""Client language: each client utterance coded as change talk, sustain talk or neutral (MISC), C:S.

Two coders:

- `fit` / `predict`: a classifier trained on AnnoMI's human `client_talk_type` labels (TF-IDF of the
  client's words and of the counselor's turn before it, balanced logistic regression). AnnoMI is
  English: use it for English sessions.
- `code_llm`: an LLM prompt through the study's endpoint (`api.complete`), any language.

`validate` scores the classifier on held-out recordings (split by `video_url`, so no recording is
both trained and tested on) with Cohen's kappa and a recording-level bootstrap CI, and its accuracy
beside the majority class's on the same test utterances; `validate_splits` repeats it over several
seeded splits (kappa's mean and range: one split alone moves it by several hundredths).
`reference` counts AnnoMI's human labels per MI quality (high / low), pooled and per conversation:
the C:S the chat sessions are shown beside.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm.stats import cohen_kappa

LABELS = ("change", "sustain", "neutral")


def cs_ratio(change: float, sustain: float) -> float:
    """C:S, change talk per sustain talk; nan without sustain talk."""
    return change / sustain if sustain else math.nan


# ----------------------------------------------------------------------------- AnnoMI
def annomi_client(path) -> pd.DataFrame:
    """AnnoMI's client utterances: transcript_id, video_url, mi_quality, text, previous (the
    counselor's turn before it, '' when none) and label (change | sustain | neutral)."""
    from mi_llm.data import corpora
    from mi_llm.data.schema import DataError

    rows = []
    for d in corpora.load("annomi", Path(path)):
        prev = ""
        for i, t in enumerate(d.turns):
            if t.speaker == "counselor":
                prev = t.text
                continue
            label = t.annotations.get("client_talk_type")
            if label not in LABELS:
                raise DataError(
                    d.source.get("file", path),
                    f"transcript {d.id} utterance {i}",
                    "client_talk_type",
                    f"expected one of {LABELS}, got {label!r}",
                )
            rows.append(
                {
                    "transcript_id": int(d.id),
                    "video_url": d.meta.get("video_url") or d.id,
                    "mi_quality": d.meta["mi_quality"],
                    "text": t.text,
                    "previous": prev,
                    "label": label,
                }
            )
    return pd.DataFrame(rows)


def reference(client: pd.DataFrame) -> pd.DataFrame:
    """AnnoMI's human labels per MI quality and definition: change, sustain, neutral counts and C:S
    pooled (all of a quality's client utterances), and per conversation (each session's C:S, then
    the mean over the sessions with sustain talk, n_defined of them)."""
    rows = []
    for q, d in client.groupby("mi_quality"):
        n = d["label"].value_counts()
        c, s = int(n.get("change", 0)), int(n.get("sustain", 0))
        per = d.groupby("transcript_id")["label"].agg(
            lambda x: cs_ratio((x == "change").sum(), (x == "sustain").sum())
        )
        base = {
            "group": "reference",
            "model": "annomi",
            "variant": q,
            "change": c,
            "sustain": s,
            "neutral": int(n.get("neutral", 0)),
            "n_sessions": d["transcript_id"].nunique(),
        }
        rows.append({**base, "definition": "pooled", "c_s": cs_ratio(c, s)})
        rows.append(
            {
                **base,
                "definition": "per_conversation",
                "c_s": float(per.mean()),  # NaN sessions (no sustain talk) are skipped
                "n_defined": int(per.notna().sum()),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the classifier
def build(C: float = 1.0, seed: int = 0):
    """TF-IDF (client words 1-2-grams + characters 2-5, the counselor's turn before) + logistic
    regression with balanced class weights."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    features = ColumnTransformer(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "text"),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True
                ),
                "text",
            ),
            (
                "previous",
                TfidfVectorizer(
                    ngram_range=(1, 2), min_df=3, sublinear_tf=True, max_features=20000
                ),
                "previous",
            ),
        ]
    )
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)
    return make_pipeline(features, clf)


def fit(client: pd.DataFrame, C: float = 1.0, seed: int = 0):
    """The classifier trained on AnnoMI client utterances (annomi_client)."""
    return build(C, seed).fit(client[["text", "previous"]], client["label"])


def predict(model, texts: list[str], previous: list[str] | None = None) -> list[str]:
    """Labels for client utterances, each with the counselor's turn before it."""
    X = pd.DataFrame({"text": texts, "previous": previous or [""] * len(texts)})
    return [str(y) for y in model.predict(X)] if texts else []


def validate(
    client: pd.DataFrame,
    test_size: float = 0.25,
    seed: int = 42,
    bootstrap: int = 1000,
    C: float = 1.0,
) -> dict:
    """Train on some recordings, test on the others (grouped by video_url): kappa with a 95% CI
    from resampling test recordings, accuracy, macro-F1, per-label recall, and C:S predicted vs human."""
    from sklearn.metrics import f1_score, recall_score
    from sklearn.model_selection import GroupShuffleSplit

    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    tr, te = next(split.split(client, client["label"], client["video_url"]))
    train, test = client.iloc[tr], client.iloc[te]
    model = fit(train, C, seed)
    pred = np.array(predict(model, test["text"].tolist(), test["previous"].tolist()))
    y = test["label"].to_numpy()
    groups = test["video_url"].to_numpy()
    uniq = np.unique(groups)
    idx = {g: np.flatnonzero(groups == g) for g in uniq}
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        pick = np.concatenate([idx[g] for g in rng.choice(uniq, size=len(uniq), replace=True)])
        boots.append(cohen_kappa(y[pick], pred[pick]))
    boots = np.array([b for b in boots if not math.isnan(b)])
    recall = recall_score(y, pred, labels=list(LABELS), average=None, zero_division=0)
    n = pd.Series(pred).value_counts()
    return {
        "coder": "classifier (AnnoMI)",
        "n_train": len(train),
        "n_test": len(test),
        "train_recordings": train["video_url"].nunique(),
        "test_recordings": len(uniq),
        "kappa": cohen_kappa(y, pred),
        "kappa_ci_low": float(np.percentile(boots, 2.5)) if len(boots) else math.nan,
        "kappa_ci_high": float(np.percentile(boots, 97.5)) if len(boots) else math.nan,
        "accuracy": float(np.mean(y == pred)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        **{f"recall_{lab}": float(r) for lab, r in zip(LABELS, recall)},
        "majority_class": str(train["label"].mode()[0]),
        "majority_accuracy": float(np.mean(y == train["label"].mode()[0])),
        "c_s_human": cs_ratio((y == "change").sum(), (y == "sustain").sum()),
        "c_s_predicted": cs_ratio(int(n.get("change", 0)), int(n.get("sustain", 0))),
    }


def validate_splits(
    client: pd.DataFrame, n_splits: int = 5, seed: int = 42, bootstrap: int = 1000, **kw
) -> tuple[pd.DataFrame, dict]:
    """validate() over n_splits seeded recording splits (seed, seed+1, ...): the rows, and kappa's
    mean and range beside accuracy's mean and the majority class's mean accuracy."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits}")
    rows = pd.DataFrame(
        [
            {"split": i, **validate(client, seed=seed + i, bootstrap=bootstrap, **kw)}
            for i in range(n_splits)
        ]
    )
    summary = {
        "coder": rows["coder"].iloc[0],
        "n_splits": n_splits,
        "kappa_mean": float(rows["kappa"].mean()),
        "kappa_min": float(rows["kappa"].min()),
        "kappa_max": float(rows["kappa"].max()),
        "accuracy_mean": float(rows["accuracy"].mean()),
        "majority_accuracy_mean": float(rows["majority_accuracy"].mean()),
        "macro_f1_mean": float(rows["macro_f1"].mean()),
        "agreement": agreement_words(float(rows["kappa"].mean())),
    }
    return rows, summary


def agreement_words(kappa: float) -> str:
    """Landis & Koch's words for a kappa: slight (<= .20), fair, moderate, substantial, almost perfect."""
    if math.isnan(kappa):
        return "n/a"
    for top, word in (
        (0.0, "poor"),
        (0.2, "slight"),
        (0.4, "fair"),
        (0.6, "moderate"),
        (0.8, "substantial"),
    ):
        if kappa <= top:
            return word
    return "almost perfect"


# ----------------------------------------------------------------------------- the LLM coder
PROMPT = """Code the client's last utterance in a counselling conversation with the MISC client codes:
change = the client's own words in favour of change (desire, ability, reasons, need, commitment, taking steps);
sustain = the client's words in favour of the status quo, against change;
neutral = neither (information, questions, small talk, agreement without a direction).
The utterance may be in Chinese or English. Answer with one word: change, sustain or neutral.

Counselor before it: {previous}
Client: {text}
Code:"""


_CLIENT_WORD = re.compile(r"change|sustain|neutral|改变|维持|中性", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|non|never|isn't|is not)\b|不|非|没有|并非", re.IGNORECASE)
_ZH = {"改变": "change", "维持": "sustain", "中性": "neutral"}


def parse(text: str) -> str:
    """The one client code of an answer (English or Chinese): its first line starts with it, and
    no other code, negation ("not change") or code on a later line follows; ValueError otherwise."""
    s = (text or "").strip()
    words = {_ZH.get(w, w.lower()) for w in _CLIENT_WORD.findall(s)}
    if not words:
        raise ValueError("no client code (change, sustain, neutral) in the answer")
    if len(words) > 1:
        raise ValueError(f"more than one client code in the answer: {s[:60]!r}")
    if _NEGATION.search(s):
        raise ValueError(f"a negated or hedged client code: {s[:60]!r}")
    lines = [ln for ln in s.splitlines() if ln.strip()]
    first = re.sub(
        r"^(?:code|answer|label)\s*[:：]\s*",
        "",
        lines[0].strip().strip("`*\"'“” "),
        flags=re.IGNORECASE,
    )
    m = _CLIENT_WORD.match(first)
    if not m or re.match(r"[A-Za-z]", first[m.end() : m.end() + 1]):
        raise ValueError(f"the answer does not start with a client code: {s[:60]!r}")
    if any(_CLIENT_WORD.search(ln) for ln in lines[1:]):
        raise ValueError(f"a client code after the first line: {s[:60]!r}")
    return _ZH.get(m.group(0), m.group(0).lower())


def code_llm(
    ep, texts: list[str], previous: list[str], llm_params, cache_path=None, retries: int = 1
) -> list[str | None]:
    """Client codes from an LLM through api.complete (cached); None where no valid answer came."""
    from mi_llm.llm import api

    contents, keys = {}, []
    for t, p in zip(texts, previous):
        content = PROMPT.format(previous=(p or "(none)").strip(), text=t.strip())
        k = "client_talk:" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:20]
        contents[k] = content
        keys.append(k)
    settings = {"temperature": 0.0, "max_tokens": 6}
    by_key = api.complete_by_key(
        ep, contents, llm_params=llm_params, cache_path=cache_path, retries=retries,
        settings=settings, validate=parse, truncated_ok=True, desc="client talk",
    )  # fmt: skip
    return [by_key[k].parsed if by_key[k].ok else None for k in keys]
