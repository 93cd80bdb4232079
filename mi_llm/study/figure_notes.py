"""What a figure panel says where its numbers cannot be read: a panel without a single value says
what is missing ("not rated", "not annotated") instead of showing empty axes, and a panel with a
CI over fewer than metrics.MIN_DIALOGUES dialogues says "n < 5 dialogues: too small to read"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mi_llm.eval.metrics import TOO_SMALL

# panel metric -> what a panel without any value lacks
MISSING = {
    "technical": "not rated: no MITI global ratings",
    "relational": "not rated: no MITI global ratings",
    "pct_mi_adherent": "not annotated: no MI-adherent / non-adherent codes",
    "r_q": "not coded: no questions",
    "pct_cr": "not coded: no reflections",
    "name_mismatch": "not rated: no round has a known client name",
}


def empty(ax, values, metric: str | None = None) -> bool:
    """Write on ax what is missing when `values` has no finite number; whether it did."""
    if np.isfinite(np.asarray(values, dtype=float)).any():
        return False
    ax.text(
        0.5,
        0.5,
        MISSING.get(metric, "not rated").replace(": ", ":\n"),  # two lines fit a narrow panel
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=7,
        color="0.25",
        bbox={"facecolor": "white", "edgecolor": "0.6", "boxstyle": "round,pad=0.3"},
    )
    return True


def too_small(ax, table: pd.DataFrame) -> bool:
    """Mark ax when a bar of `table` (with too_small, or n_dialogues) has a CI over fewer than
    MIN_DIALOGUES dialogues; whether it did."""
    if "too_small" in table:
        small = table["too_small"].fillna(False).astype(bool)
    else:
        small = pd.Series(False, index=table.index)
    small &= table["value"].notna() if "value" in table else True
    if not small.any():
        return False
    ax.text(
        0.99,
        0.01,
        TOO_SMALL.replace(": ", ":\n"),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=6,
        color="#b2182b",
    )
    return True
