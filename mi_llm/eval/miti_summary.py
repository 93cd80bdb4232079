"""MITI summary scores per (model, variant) in both definitions, each with a dialogue-cluster CI.

- pooled: a group's behaviour counts summed over its dialogues, then the ratio (R:Q = (SR+CR)/Q
  over all its utterances); globals are the mean over the rated dialogues.
- per_conversation: each dialogue's own score, then the mean over the dialogues where the score is
  defined (a dialogue without a question has no R:Q); MIBot's published figures are of this kind.

The 95% CI of every score (miti.SCORES) is a percentile bootstrap that resamples whole dialogues
with replacement and recomputes the score in the same definition: the utterances of one dialogue
are not independent. Beside each row: n_dialogues, n_replies, n_utterances, n_coded, n_missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mi_llm.eval import miti
from mi_llm.eval.miti import CODES, GLOBALS, SCORES, SUMMARY_COLUMNS, summary_scores

LEVEL = 0.95


def _pooled(counts: np.ndarray, globals_: np.ndarray, n_coded: np.ndarray) -> dict:
    """Scores of dialogues pooled: counts (d x codes, NaN: not annotated), globals (d x 4)."""
    c = dict(zip(CODES, _nansum(counts)))
    with np.errstate(all="ignore"):
        g = dict(zip(GLOBALS, _nanmean(globals_)))
    return summary_scores(c, g, float(n_coded.sum()))


def _nansum(x: np.ndarray) -> np.ndarray:
    """Column sums; NaN where a column is NaN throughout (not annotated), NaN counted as 0 else."""
    out = np.nansum(x, axis=0)
    out[np.isnan(x).all(axis=0)] = np.nan
    return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape[1], np.nan)
    ok = ~np.isnan(x).all(axis=0)
    out[ok] = np.nanmean(x[:, ok], axis=0)
    return out


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
    if definition == "pooled":

        def stat(rows):
            return [_pooled(counts[rows], glob[rows], n_coded[rows])[s] for s in SCORES]
    elif definition == "per_conversation":
        per = np.array(
            [
                [_pooled(counts[[i]], glob[[i]], n_coded[[i]])[s] for s in SCORES]
                for i in range(len(d))
            ]
        ).reshape(len(d), len(SCORES))

        def stat(rows):
            return _nanmean(per[rows])
    else:
        raise ValueError(f"unknown definition {definition!r}; known: {list(miti.DEFINITIONS)}")
    point = np.asarray(stat(np.arange(len(d))), float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(d), size=(bootstrap, len(d)))  # resampled dialogues
    lo, hi = _ci(np.array([stat(r) for r in draws], float).reshape(bootstrap, len(SCORES)))
    out = {"definition": definition, **dict(zip(SCORES, point))}
    out.update({f"{s}_ci_low": lo[j] for j, s in enumerate(SCORES)})
    out.update({f"{s}_ci_high": hi[j] for j, s in enumerate(SCORES)})
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
