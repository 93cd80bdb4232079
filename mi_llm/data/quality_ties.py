"""Ties in stage 01's ranking: corpora whose mean rubric totals are equal are ranked by the
documented tie-break (quality.rank: the higher total_ci_low, then the larger corpus, then the
name), not by a better score, and quality.csv, the notebook and the figure say so."""

from __future__ import annotations

import pandas as pd

TIE_BREAK = "higher total_ci_low, then more dialogues, then the name"


def _groups(ranked: pd.DataFrame) -> list[list[int]]:
    """Row positions of each group of two or more judged corpora with the same total."""
    ranked = ranked.reset_index(drop=True)
    totals = ranked["total"].round(9)
    groups = totals[totals.notna()].groupby(totals, sort=False).groups
    return [[ranked.index.get_loc(i) for i in rows] for rows in groups.values() if len(rows) > 1]


def mark(ranked: pd.DataFrame) -> pd.DataFrame:
    """ranked (in rank order) with tied_with (the other corpora of its total, ';'-joined) and
    selection_note (for a tied corpus: its rank among them is the tie-break's, not a score's)."""
    tied, notes = [""] * len(ranked), [""] * len(ranked)
    corpora = ranked["corpus"].tolist()
    for rows in _groups(ranked):
        for r in rows:
            others = [corpora[o] for o in rows if o != r]
            tied[r] = ";".join(others)
            notes[r] = (
                f"tie at total {ranked['total'].iloc[r]:g} with {', '.join(others)}: ranked "
                f"among them by the tie-break ({TIE_BREAK}), not by a better score"
            )
    return ranked.assign(tied_with=tied, selection_note=notes)


def tie_note(ranked: pd.DataFrame) -> str:
    """One sentence per tie that decides the selection (tied corpora on both sides of top_k):
    which were selected among them and why; "" without such a tie."""
    out = []
    ranked = ranked.reset_index(drop=True)
    for rows in _groups(ranked):
        sub = ranked.iloc[rows]
        chosen = sub.loc[sub["selected"].astype(bool), "corpus"].tolist()
        if not chosen or len(chosen) == len(sub):
            continue
        out.append(
            f"{', '.join(sub['corpus'])} tie at total {sub['total'].iloc[0]:g}: {', '.join(chosen)} "
            f"selected by the tie-break ({TIE_BREAK}), not by a better score."
        )
    return " ".join(out)
