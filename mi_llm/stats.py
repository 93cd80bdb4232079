"""Statistics shared by the stages: bootstrap CIs (resampling whole clusters, such as dialogues)
and agreement between raters."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def bootstrap_ci(
    values, bootstrap: int = 1000, seed: int = 0, level: float = 0.95, clusters=None
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (NaN, NaN when empty).

    clusters: one label per value (the dialogue); whole clusters are resampled with replacement
    and the statistic is the mean over all values of the drawn clusters.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    if clusters is None:
        means = x[rng.integers(0, x.size, size=(bootstrap, x.size))].mean(axis=1)  # (bootstrap,)
    else:
        codes, _ = pd.factorize(pd.Series(list(clusters)).astype(str))
        k = codes.max() + 1
        sums = np.bincount(codes, weights=x, minlength=k)  # per cluster: sum and size
        sizes = np.bincount(codes, minlength=k).astype(float)
        draws = rng.integers(0, k, size=(bootstrap, k))  # bootstrap x k resampled clusters
        means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two raters' labels (unweighted, as scikit-learn's cohen_kappa_score); NaN
    when undefined (one label only). Plain numpy, since bootstrap CIs call it
    a thousand times."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"kappa needs paired labels, got {len(a)} and {len(b)}")
    code = {label: i for i, label in enumerate(dict.fromkeys([*a, *b]))}
    k = len(code)
    if not a or k < 2:
        return math.nan
    pairs = np.fromiter((code[x] * k + code[y] for x, y in zip(a, b)), int, len(a))
    table = np.bincount(pairs, minlength=k * k).reshape(k, k) / len(a)  # rater a x rater b
    agreed, chance = np.trace(table), table.sum(1) @ table.sum(0)
    return float((agreed - chance) / (1 - chance))
