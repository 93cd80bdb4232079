"""MITI summary scores per (model, variant) in both definitions, each with a dialogue-cluster CI.

- pooled: a group's behaviour counts summed over its dialogues, then the ratio (R:Q = (SR+CR)/Q
  over all its utterances); globals are the mean over the rated dialogues.
- per_conversation: each dialogue's own score, then the mean over the dialogues where the score is
  defined (a dialogue without a question has no R:Q); MIBot's published figures are of this kind.

The 95% CI of every score (miti.SCORES) is a percentile bootstrap that resamples whole dialogues
with replacement and recomputes the score in the same definition: the utterances of one dialogue
are not independent. Beside each row: n_dialogues, too_small (fewer than metrics.MIN_DIALOGUES
dialogues: the CIs are too small to read), n_replies, n_utterances, n_coded, n_missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mi_llm.eval import miti
from mi_llm.eval.metrics import too_small
from mi_llm.eval.miti import CODES, GLOBALS, SCORES, SUMMARY_COLUMNS

LEVEL = 0.95


_K = {k: i for i, k in enumerate(CODES)}
_G = {k: i for i, k in enumerate(GLOBALS)}


def _score_matrix(c: np.ndarray, g: np.ndarray, n: np.ndarray) -> np.ndarray:
    """miti.summary_scores over rows at once: counts (r x codes), globals (r x 4), n_coded (r)
    -> (r x SCORES); the same formulas, NaN where a denominator is 0 or a count not annotated."""
    col = {k: c[:, i] for k, i in _K.items()}
    glob = {k: g[:, i] for k, i in _G.items()}
    out = miti.formulas(col, glob, n)
    return np.stack([out[s] for s in SCORES], axis=1)


def _pooled(counts: np.ndarray, glob: np.ndarray, n_coded: np.ndarray, draws: np.ndarray):
    """Pooled scores of each draw (rows of dialogue indices): counts summed (a code NaN in
    every dialogue stays NaN: not annotated), globals averaged over the rated dialogues."""
    c = np.nansum(counts[draws], axis=1)
    c[:, np.isnan(counts).all(axis=0)] = np.nan
    g = glob[draws]
    rated = (~np.isnan(g)).sum(axis=1)
    with np.errstate(all="ignore"):
        g = np.where(rated > 0, np.nansum(g, axis=1) / np.maximum(rated, 1), np.nan)
    return _score_matrix(c, g, n_coded[draws].sum(axis=1))


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    ok = (~np.isnan(x)).sum(axis=axis)
    with np.errstate(all="ignore"):
        return np.where(ok > 0, np.nansum(x, axis=axis) / np.maximum(ok, 1), np.nan)


def _ci(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI per column of (bootstrap x scores) draws, ignoring undefined (NaN) draws."""
    alpha = (1 - LEVEL) / 2
    lo, hi = np.full(draws.shape[1], np.nan), np.full(draws.shape[1], np.nan)
    for j in range(draws.shape[1]):
        col = draws[:, j][~np.isnan(draws[:, j])]
        if col.size:
            lo[j], hi[j] = np.quantile(col, [alpha, 1 - alpha])
    return lo, hi


def scores_with_ci(d: pd.DataFrame, definition: str, bootstrap: int, seed: int) -> dict:
    """The scores of one group's dialogues (dialogue_table rows) in one definition, with CIs."""
    counts = d[list(CODES)].to_numpy(float)
    glob = d[list(GLOBALS)].to_numpy(float)
    n_coded = d["n_coded"].to_numpy(float)
    everything = np.arange(len(d))[None, :]
    if definition == "pooled":

        def stat(draws):
            return _pooled(counts, glob, n_coded, draws)
    elif definition == "per_conversation":
        per = _pooled(counts, glob, n_coded, np.arange(len(d))[:, None])  # dialogue x score

        def stat(draws):
            return _nanmean(per[draws], axis=1)
    else:
        raise ValueError(f"unknown definition {definition!r}; known: {list(miti.DEFINITIONS)}")
    point = stat(everything)[0]
    rng = np.random.default_rng(seed)
    lo, hi = _ci(stat(rng.integers(0, len(d), size=(bootstrap, len(d)))))  # resampled dialogues
    out = {"definition": definition, **dict(zip(SCORES, map(float, point)))}
    out.update({f"{s}_ci_low": float(lo[j]) for j, s in enumerate(SCORES)})
    out.update({f"{s}_ci_high": float(hi[j]) for j, s in enumerate(SCORES)})
    out.update({f"{s}_label": miti.label(s, out[s]) for s in miti.THRESHOLDS})
    return out


def group_summary(
    per_dialogue: pd.DataFrame,
    group: str,
    bootstrap: int = 1000,
    seed: int = 0,
    definitions=tuple(miti.DEFINITIONS),
) -> pd.DataFrame:
    """Per (model, variant) and definition: the summary scores with 95% CIs (resampling
    dialogues), the counts pooled, the globals averaged over rated dialogues, and the n's."""
    rows = []
    for (model, variant), d in per_dialogue.groupby(["model", "variant"], sort=False):
        d = d.reset_index(drop=True)
        counts = {k: d[k].sum(min_count=1) for k in CODES}  # all-NaN (not annotated) stays NaN
        glob = {k: d[k].mean() for k in GLOBALS}  # NaN ratings (missing) are skipped
        n_utt, n_coded = int(d["n_utterances"].sum()), int(d["n_coded"].sum())
        n_rated = int(d[list(GLOBALS)].notna().all(axis=1).sum())
        n_replies = int(d["n_replies"].sum()) if "n_replies" in d else n_utt
        for definition in definitions:
            rows.append(
                {
                    "group": group,
                    "model": model,
                    "variant": variant,
                    **scores_with_ci(d, definition, bootstrap, seed),
                    "n_dialogues": len(d),
                    "too_small": too_small(len(d)),  # CIs over < 5 dialogues: not to be read
                    "n_replies": n_replies,
                    "n_utterances": n_utt,
                    "n_coded": n_coded,
                    "n_missing": n_utt - n_coded,
                    "pass_rate": n_coded / n_utt if n_utt else np.nan,
                    "n_rated": n_rated,
                    "n_unrated": len(d) - n_rated,
                    **counts,
                    **glob,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
