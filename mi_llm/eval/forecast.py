"""MI strategy forecaster (the KMI idea): the counselor's next MI behaviour from the dialogue.

Trained and scored on AnnoMI's human labels, split by recording (AnnoMI cuts some recordings into
several transcripts with the same therapist and client: a split by transcript would leak), against
a majority-class and a previous-behaviour baseline; a forecaster beats them when the 95% CI of its
paired macro-F1 difference to the stronger one lies above 0. Two fitted variants share one feature builder: "text" (TF-IDF of the
last client utterance and the recent context, plus the language-independent features) for English,
and "universal" (previous behaviours, turn position, question marks, length ratios only) for
dialogues it cannot read, e.g. the Chinese MI corpus. A third, "untagged", is the language-
independent one trained with the behaviours of the history hidden: the forecaster of a dialogue
whose counselor turns carry no labels (a corpus transcribed without tags), scored the same way.
The strategy tags that carry a behaviour through transcription (02), SFT (03) and conditioned
generation (04) are defined in mi_llm.data.schema.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm.data.schema import CJK, SPEAKER_OF, TAGS, DataError, Dialogue, Turn, strip_tag
from mi_llm.params import FORECASTER_KINDS, ForecasterParams

NONE = "none"  # the previous behaviour before the counselor has spoken, or when it is unknown


# ----------------------------------------------------------------------------- AnnoMI sessions
def annotation_label(row: dict) -> str | None:
    """AnnoMI codes of a therapist utterance -> a TAGS label (None: reflection without subtype)."""
    main = row["main_therapist_behaviour"]
    if main == "question":
        sub = row.get("question_subtype")
        return f"{sub}_question" if sub in ("open", "closed") else None
    if main == "reflection":
        sub = row.get("reflection_subtype")
        return f"{sub}_reflection" if sub in ("simple", "complex") else None
    if main in ("therapist_input", "other"):
        return main
    raise ValueError(f"unknown main_therapist_behaviour {main!r}")


def load_sessions(path, mi_quality=("high", "low")) -> list[Dialogue]:
    """AnnoMI sessions (folder or CSV, through mi_llm.data.corpora) of the given MI-quality ratings."""
    from mi_llm.data import corpora

    return [d for d in corpora.load("annomi", path) if d.meta.get("mi_quality") in mi_quality]


def turn_label(turn: Turn, where=("?", "?")) -> str | None:
    """A counselor turn's TAGS label: annotations['behaviour'] or AnnoMI's codes (None: unknown)."""
    ann = turn.annotations
    if ann.get("behaviour"):
        return ann["behaviour"]
    if "main_therapist_behaviour" not in ann:
        return None
    try:
        return annotation_label(ann)
    except ValueError as e:
        raise DataError(where[0], where[1], "main_therapist_behaviour", str(e)) from e


def recording(d: Dialogue) -> str:
    """The recording a transcript comes from (AnnoMI's video_url; the transcript id without one)."""
    return d.meta.get("video_url") or f"transcript:{d.id}"


def split_sessions(dialogues, test_size: float, seed: int) -> tuple[list, list]:
    """Seeded GroupShuffleSplit by recording, stratified by mi_quality: (train, test) dialogues.

    A recording's stratum is the set of its transcripts' ratings (two AnnoMI recordings hold a
    high- and a low-quality part), so that no recording is split across the strata either.
    """
    from sklearn.model_selection import GroupShuffleSplit

    ratings: dict = {}
    for d in dialogues:
        ratings.setdefault(recording(d), set()).add(d.meta.get("mi_quality", ""))
    stratum_of = {r: "+".join(sorted(q)) for r, q in ratings.items()}
    train, test = [], []
    for q in sorted(set(stratum_of.values())):
        stratum = [d for d in dialogues if stratum_of[recording(d)] == q]
        groups = [recording(d) for d in stratum]
        if len(set(groups)) < 2:  # one recording cannot be split; it trains
            train += stratum
            continue
        gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        tr, te = next(gss.split(stratum, groups=groups))
        train += [stratum[i] for i in tr]
        test += [stratum[i] for i in te]
    return train, test


# ----------------------------------------------------------------------------- features
UNIVERSAL_NUMERIC = [
    "position",
    "client_question",
    "therapist_question",
    "client_len_rel",
    "client_vs_therapist_len",
    "therapist_continues",
    "client_turns_since_question",
    *(f"share_{t}" for t in TAGS),
]
CATEGORICAL = ["prev_label", "prev2_label", "prev_pair"]


def _has_q(text: str) -> float:
    return float("?" in text or "？" in text)


def turn_features(history: list[tuple[str, str, str | None]], context_turns: int = 2) -> dict:
    """Features of the next counselor turn from a (speaker, text, label) history; lengths as ratios."""
    client = [t for s, t, _ in history if s == "client"]
    ther = [(t, lab) for s, t, lab in history if s == "counselor"]
    labels = [lab or NONE for _, lab in ther]
    last_client = client[-1] if client else ""
    last_ther = ther[-1][0] if ther else ""
    mean_client = np.mean([len(t) for t in client]) if client else 0.0
    since_q = 0
    for s, t, lab in reversed(history):  # client turns since the counselor last asked something
        if s == "counselor" and (_has_q(t) or (lab or "").endswith("question")):
            break
        since_q += s == "client"
    return {
        "client_text": last_client,
        "context_text": " ".join(t for _, t, _ in history[-context_turns:])
        if context_turns
        else "",
        "prev_label": labels[-1] if labels else NONE,
        "prev2_label": labels[-2] if len(labels) > 1 else NONE,
        "prev_pair": "|".join(labels[-2:]) or NONE,
        "therapist_text": last_ther,
        "position": math.log1p(len(history)),
        "client_question": _has_q(last_client),
        "therapist_question": _has_q(last_ther),
        "client_len_rel": math.log((len(last_client) + 1) / (mean_client + 1)),
        "client_vs_therapist_len": math.log((len(last_client) + 1) / (len(last_ther) + 1)),
        "therapist_continues": float(bool(history) and history[-1][0] == "counselor"),
        "client_turns_since_question": float(min(since_q, 5)),
        # the counselor's style so far in this session: share of each behaviour among its turns
        **{f"share_{t}": labels.count(t) / len(labels) if labels else 0.0 for t in TAGS},
    }


def _history(d: Dialogue) -> list[tuple[str, str, str | None]]:
    where = (d.source.get("file", d.corpus), d.source.get("record", d.id))
    return [
        (t.speaker, t.text, turn_label(t, where) if t.speaker == "counselor" else None)
        for t in d.turns
    ]


def examples(
    dialogues, context_turns: int = 2, tagged: bool = True
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One row per labelled counselor turn: (features X, next label y, recording groups).

    tagged=False hides the behaviours of the history, as in a dialogue transcribed without tags.
    """
    rows, y, groups = [], [], []
    for d in dialogues:
        hist = _history(d)
        seen = hist if tagged else [(s, t, None) for s, t, _ in hist]
        for i, (speaker, _, label) in enumerate(hist):
            if speaker == "counselor" and label is not None:
                rows.append(turn_features(seen[:i], context_turns))
                y.append(label)
                groups.append(recording(d))
    if not rows:
        raise ValueError("no labelled counselor turns in these dialogues")
    return pd.DataFrame(rows), np.array(y), np.array(groups)


# ----------------------------------------------------------------------------- models
KINDS = FORECASTER_KINDS  # forecaster kinds, named in params


def build(kind: str, C: float = 1.0, seed: int = 0):
    """An unfitted sklearn pipeline of one forecaster kind (KINDS); class-balanced for macro-F1."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if kind not in KINDS:
        raise ValueError(f"unknown forecaster kind {kind!r}; known: {list(KINDS)}")
    parts = [
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=kind != "boost"), CATEGORICAL),
        ("num", StandardScaler(), UNIVERSAL_NUMERIC),
    ]
    words = {"min_df": 2, "sublinear_tf": True}
    if (
        kind == "text"
    ):  # word 1-2 grams of the client's last turn; words of the counselor's and context
        parts += [
            ("client", TfidfVectorizer(ngram_range=(1, 2), **words), "client_text"),
            ("therapist", TfidfVectorizer(**words), "therapist_text"),
            ("context", TfidfVectorizer(**words), "context_text"),
        ]
    elif kind == "char":  # character 2-5 grams of the client's turn: robust to transcription noise
        parts += [
            (
                "client",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    min_df=3,
                    sublinear_tf=True,
                    max_features=50000,
                ),
                "client_text",
            ),
            ("therapist", TfidfVectorizer(**words), "therapist_text"),
            ("context", TfidfVectorizer(**words), "context_text"),
        ]
    if kind == "boost":  # gradient-boosted trees on the language-independent features
        clf = HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            class_weight="balanced",
            random_state=seed,
        )
    else:
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=3000, random_state=seed)
    return Pipeline([("features", ColumnTransformer(parts)), ("clf", clf)])


# ----------------------------------------------------------------------------- the stage-04 call
def fit(train, s: ForecasterParams, seed: int = 0) -> dict:
    """Fit the variants on training sessions: the chosen kind, the language-independent one, and
    the language-independent one on untagged history. s: the validated P.evaluation.forecaster."""
    from threadpoolctl import threadpool_limits

    X, y, groups = examples(train, s.context_turns)
    X_untagged, _, _ = examples(train, s.context_turns, tagged=False)
    with threadpool_limits(1):  # small sparse problem: BLAS threads cost more than they save
        bundle = _fit(X, y, groups, s, seed)
        bundle["untagged"] = build("universal", s.C, seed).fit(X_untagged, y)
    bundle["train_sessions"] = sorted(d.id for d in train)
    return bundle


def majority_baseline(y_train) -> str:
    """The most frequent training label (ties: first in TAGS order)."""
    counts = pd.Series(list(y_train)).value_counts()
    return next(t for t in TAGS if counts.get(t, 0) == counts.max())


def _fit(X, y, groups, s, seed) -> dict:
    bundle = {
        "tags": TAGS,
        "kind": s.model,
        "context_turns": s.context_turns,
        "majority": majority_baseline(y),
        "n_train": len(y),
        "train_recordings": sorted(set(groups)),
    }
    bundle["universal"] = build("universal", s.C, seed).fit(X, y)
    bundle["text"] = (
        build(s.model, s.C, seed).fit(X, y) if s.model != "universal" else bundle["universal"]
    )
    return bundle


def save(bundle: dict, path) -> Path:
    """Write a fitted forecaster bundle with joblib."""
    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(bundle, path)
    return path


def load(path) -> dict:
    """Read a bundle written by save(); refuses one fitted for another label set."""
    import joblib

    bundle = joblib.load(path)
    if not isinstance(bundle, dict) or tuple(bundle.get("tags", ())) != TAGS:
        raise ValueError(f"{path}: not a forecaster bundle for labels {list(TAGS)}")
    return bundle


def _as_history(turns) -> list[tuple[str, str, str | None]]:
    """Turns or {speaker,text} / {role,content} dicts -> (speaker, text, label); tags give labels."""
    out = []
    for i, t in enumerate(turns):
        if isinstance(t, Turn):
            speaker, text, ann = t.speaker, t.text, t.annotations
        elif isinstance(t, dict) and "role" in t:
            if t["role"] == "system":
                continue
            speaker = SPEAKER_OF.get(t["role"], t["role"])
            text, ann = t.get("content", ""), {}
        elif isinstance(t, dict):
            speaker, text, ann = t.get("speaker"), t.get("text", ""), t.get("annotations", {})
        else:
            raise TypeError(f"turn {i}: expected a Turn or a dict, got {type(t).__name__}")
        if speaker not in ("client", "counselor"):
            raise ValueError(f"turn {i}: unknown speaker {speaker!r}")
        tagged, text = strip_tag(text)
        label = turn_label(Turn(speaker, text, ann)) if speaker == "counselor" else None
        out.append((speaker, text, label or tagged))
    return out


def predict_next(model: dict, dialogue_turns, language: str = "auto") -> str:
    """The counselor's next MI behaviour (a TAGS label) after these turns.

    language: "auto" uses the text variant for dialogues without CJK characters and the
    language-independent variant otherwise (the text variant learned English words only);
    "text" / "universal" force one. Counselor turns' labels come from annotations['behaviour']
    or a leading <mi:...> tag; when the counselor has spoken and none of its turns carries a
    label (a corpus transcribed without tags), the "untagged" variant answers, the one trained
    on such history.
    """
    hist = _as_history(dialogue_turns)
    if language == "auto":
        language = "universal" if any(CJK.search(t) for _, t, _ in hist) else "text"
    if language not in ("text", "universal"):
        raise ValueError(f"language must be 'auto', 'text' or 'universal', got {language!r}")
    counselor = [lab for s, _, lab in hist if s == "counselor"]
    if counselor and not any(counselor) and "untagged" in model:
        language = "untagged"
    X = pd.DataFrame([turn_features(hist, model["context_turns"])])
    return str(model[language].predict(X)[0])
