"""The forecaster scored: trained on AnnoMI's training sessions, scored on held-out recordings against
its baselines (majority class, a class-prior random draw, the previous behaviour), with CIs that
resample recordings; forecaster.csv and forecaster.joblib.

On AnnoMI the tagged forecasters do not beat "repeat the previous behaviour": the paired macro-F1
difference's CI includes 0 (beats_baselines False), so a conditioned reply's behaviour is at best
as good as repeating the last one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm import stages
from mi_llm.data.schema import TAGS
from mi_llm.eval import forecast

# forecaster.csv, one row per predictor (model: the forecaster or a baseline): these id and count
# columns, each of FORECASTER_METRICS (score's, with _ci_low/_ci_high but accuracy), beats_baselines
FORECASTER_IDS = [
    "model",
    "role",
    "features",
    "n_train",
    "n_train_sessions",
    "n_train_recordings",
    "n_test_transcripts",
    "reference",
    "n_test",
    "n_test_recordings",
]


FORECASTER_METRICS = ["accuracy", "macro_f1", "delta_macro_f1", *(f"f1_{t}" for t in TAGS)]
FORECASTER_COLUMNS = [
    *FORECASTER_IDS,
    *(
        c
        for m in FORECASTER_METRICS
        for c in ((m,) if m == "accuracy" else (m, f"{m}_ci_low", f"{m}_ci_high"))
    ),
    "beats_baselines",
]


def class_prior_baseline(y_train, n: int, seed: int) -> np.ndarray:
    """n labels drawn at random from the training labels' class distribution (the chance level a
    forecaster's macro-F1 has to beat, beside the majority class)."""
    labels, counts = np.unique(np.asarray(y_train), return_counts=True)
    return np.random.default_rng(seed).choice(labels, size=n, p=counts / counts.sum())


def previous_baseline(X: pd.DataFrame, fallback: str) -> np.ndarray:
    """Predict the counselor's previous behaviour; `fallback` where there is none yet."""
    prev = X["prev_label"].to_numpy()
    return np.where(np.isin(prev, TAGS), prev, fallback)


# ----------------------------------------------------------------------------- scoring
def _confusions(y_true, y_pred, groups) -> tuple[np.ndarray, list]:
    """Per-session confusion matrices, shape (sessions, K, K) over TAGS."""
    idx = {t: i for i, t in enumerate(TAGS)}
    sessions = sorted(set(groups))
    pos = {s: i for i, s in enumerate(sessions)}
    cm = np.zeros((len(sessions), len(TAGS), len(TAGS)))
    np.add.at(cm, ([pos[g] for g in groups], [idx[t] for t in y_true], [idx[p] for p in y_pred]), 1)
    return cm, sessions


def _f1(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 of confusion matrices (..., K, K); NaN for a class absent from truth and preds."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denom = cm.sum(-1) + cm.sum(-2)  # 2TP + FN + FP
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def score(y_true, y_pred, groups, bootstrap: int = 1000, seed: int = 0, reference=None) -> dict:
    """Macro-F1 and per-class F1 with 95% CIs from resampling groups (recordings), not utterances.

    reference: another model's predictions on the same turns; adds the paired difference in
    macro-F1 (this minus reference) with its CI over the same resampled sessions.
    """
    cm, sessions = _confusions(y_true, y_pred, groups)
    point = _f1(cm.sum(0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sessions), size=(bootstrap, len(sessions)))  # resampled sessions
    boot = _f1(cm[draws].sum(1))  # (bootstrap, K)
    macro_boot = np.nanmean(boot, axis=1)
    out = {
        "n_test": int(cm.sum()),
        "n_test_recordings": len(sessions),  # the resampled groups
        "accuracy": float(np.trace(cm.sum(0)) / cm.sum()),
        "macro_f1": float(np.nanmean(point)),
        "macro_f1_ci_low": float(np.percentile(macro_boot, 2.5)),
        "macro_f1_ci_high": float(np.percentile(macro_boot, 97.5)),
    }
    if reference is not None:
        ref_cm, _ = _confusions(y_true, reference, groups)
        delta = macro_boot - np.nanmean(_f1(ref_cm[draws].sum(1)), axis=1)
        out["delta_macro_f1"] = out["macro_f1"] - float(np.nanmean(_f1(ref_cm.sum(0))))
        out["delta_macro_f1_ci_low"] = float(np.percentile(delta, 2.5))
        out["delta_macro_f1_ci_high"] = float(np.percentile(delta, 97.5))
    for k, tag in enumerate(TAGS):
        out[f"f1_{tag}"] = float(point[k])
        out[f"f1_{tag}_ci_low"] = float(np.nanpercentile(boot[:, k], 2.5))
        out[f"f1_{tag}_ci_high"] = float(np.nanpercentile(boot[:, k], 97.5))
    return out


def beats_baselines(table: pd.DataFrame) -> pd.Series:
    """Per row of forecaster.csv: a forecaster whose paired macro-F1 difference to its reference
    baseline has a 95% CI above 0 (a higher point estimate alone is not enough)."""
    return (table["role"] == "forecaster") & (table["delta_macro_f1_ci_low"] > 0)


def evaluate(P, out_dir) -> pd.DataFrame:
    """Train on AnnoMI train sessions, score held-out ones vs baselines; write forecaster.csv/.joblib."""
    from mi_llm.params import path as resolve

    s = P.evaluation.forecaster
    if not s.enabled:
        return pd.DataFrame(columns=["model", "role", "features", "macro_f1"])
    dialogues = forecast.load_sessions(resolve(s.annomi_path), s.mi_quality)
    train, test = forecast.split_sessions(dialogues, s.test_size, P.seed)
    bundle = forecast.fit(train, s, P.seed)
    X, y, groups = forecast.examples(test, s.context_turns)
    X_untagged, _, _ = forecast.examples(test, s.context_turns, tagged=False)
    _, y_train, _ = forecast.examples(train, s.context_turns)
    preds = [
        ("majority", "baseline", "none", np.full(len(y), bundle["majority"])),
        (
            "class_prior",
            "baseline",
            "none (random, training class shares)",
            class_prior_baseline(y_train, len(y), P.seed),
        ),
        (
            "previous_behaviour",
            "baseline",
            "previous label",
            previous_baseline(X, bundle["majority"]),
        ),
        (
            "forecaster_universal",
            "forecaster",
            "language-independent",
            bundle["universal"].predict(X),
        ),
    ]
    if s.model != "universal":
        preds.append(
            (
                f"forecaster_{s.model}",
                "forecaster",
                "text + language-independent",
                bundle["text"].predict(X),
            )
        )
    base = {
        name: score(y, p, groups, 1)["macro_f1"] for name, role, _, p in preds if role == "baseline"
    }
    best = max(base, key=base.get)  # the paired differences are against the stronger baseline
    ref = {name: next(p for n, *_, p in preds if n == best) for name, *_ in preds}
    # as used on untagged history: the previous behaviour is unknown there, so its baseline is
    # the stronger of the two that need no history (majority class, class-prior draw)
    blind = max(("majority", "class_prior"), key=base.get)
    preds.append(
        (
            "forecaster_untagged",
            "forecaster",
            "language-independent, untagged history",
            bundle["untagged"].predict(X_untagged),
        )
    )
    ref["forecaster_untagged"] = next(p for n, *_, p in preds if n == blind)
    refname = {name: best for name in ref} | {"forecaster_untagged": blind}
    rows = [
        {
            "model": name,
            "role": role,
            "features": feats,
            "n_train": bundle["n_train"],
            "n_train_sessions": len(bundle["train_sessions"]),
            "n_train_recordings": len(bundle["train_recordings"]),
            "n_test_transcripts": len(test),
            "reference": refname[name],
            **score(y, p, groups, P.evaluation.bootstrap, P.seed, reference=ref[name]),
        }
        for name, role, feats, p in preds
    ]
    df = pd.DataFrame(rows)
    df["beats_baselines"] = beats_baselines(df)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from mi_llm.runs import write_atomic  # a unique temporary file, then a rename

    write_table(df, out_dir)
    bundle["test_sessions"] = sorted(d.id for d in test)
    bundle["test_recordings"] = sorted(set(groups))
    forecast.save(bundle, out_dir / stages.file_name(stages.FORECASTER_MODEL))
    split = {
        "train": bundle["train_sessions"],
        "test": bundle["test_sessions"],
        "train_recordings": bundle["train_recordings"],
        "test_recordings": bundle["test_recordings"],
    }
    write_atomic(out_dir / stages.file_name(stages.FORECASTER_SPLIT), json.dumps(split))
    return df


def write_table(df: pd.DataFrame, out_dir) -> Path:
    """Write forecaster.csv (FORECASTER_COLUMNS, in that order) into the stage folder."""
    from mi_llm.runs import atomic_path  # a unique temporary file, then a rename

    missing = [c for c in FORECASTER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"forecaster table lacks column(s) {missing}")
    f = Path(out_dir) / stages.file_name(stages.FORECASTER)
    with atomic_path(f) as tmp:
        df[FORECASTER_COLUMNS].to_csv(tmp, index=False)
    return f
