"""MITI summary scores with dialogue-cluster bootstrap CIs, against answers worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from mi_llm.eval import miti, miti_summary


def _dialogues(rows):
    """dialogue_table-shaped rows from {code: count} per dialogue (model m, variant v)."""
    out = []
    for i, counts in enumerate(rows):
        n = sum(counts.values())
        out.append(
            {
                "model": "m",
                "variant": "v",
                "dialogue_id": str(i),
                "n_replies": n,
                "n_utterances": n,
                "n_coded": n,
                "n_missing": 0,
                **{k: counts.get(k, 0) for k in miti.CODES},
                **{g: math.nan for g in miti.GLOBALS},
            }
        )
    return pd.DataFrame(out)


def test_two_dialogues_by_hand():
    # A: 2 SR, 1 Q (R:Q 2); B: 3 Q (R:Q 0). Pooled R:Q = 2/4 = 0.5; per conversation (2+0)/2 = 1.
    # Resampling two dialogues: AA (p 1/4) R:Q 2, AB or BA (1/2) 0.5 pooled and 1 per conversation,
    # BB (1/4) 0. The 2.5% quantile falls in BB's mass, the 97.5% in AA's: CI [0, 2] either way.
    d = _dialogues([{"SR": 2, "Q": 1}, {"Q": 3}])
    s = miti_summary.group_summary(d, "generated", bootstrap=4000, seed=3).set_index("definition")
    assert s.loc["pooled", "r_q"] == pytest.approx(0.5)
    assert s.loc["per_conversation", "r_q"] == pytest.approx(1.0)
    for definition in ("pooled", "per_conversation"):
        assert (s.loc[definition, "r_q_ci_low"], s.loc[definition, "r_q_ci_high"]) == (0.0, 2.0)
        assert s.loc[definition, "n_dialogues"] == 2 and s.loc[definition, "n_utterances"] == 6
        assert s.loc[definition, "too_small"]  # 2 dialogues: CIs too small to read
    # %CR: no complex reflection anywhere, so 0 in every resample
    assert (s.loc["pooled", "pct_cr_ci_low"], s.loc["pooled", "pct_cr_ci_high"]) == (0.0, 0.0)
    # no globals were rated: the technical score and its CI are undefined, never 0
    assert math.isnan(s.loc["pooled", "technical"]) and math.isnan(
        s.loc["pooled", "technical_ci_low"]
    )


def test_three_dialogues_against_the_exact_bootstrap_distribution():
    # every one of the 27 equally likely resamples of 3 dialogues, enumerated: its pooled R:Q
    counts = [{"SR": 1, "Q": 1}, {"CR": 2, "Q": 1}, {"SR": 0, "Q": 2, "GI": 1}]
    exact = []
    for pick in itertools.product(range(3), repeat=3):
        r = sum(counts[i].get("SR", 0) + counts[i].get("CR", 0) for i in pick)
        q = sum(counts[i]["Q"] for i in pick)
        exact.append(r / q)
    exact = np.sort(exact)
    # the exact 2.5% and 97.5% points: the 1st and the 27th of 27 (0.675 and 26.325 of 27)
    lo, hi = exact[0], exact[-1]  # 0/6 -> 0.0 (CCC) and 6/3 -> 2.0 (BBB), each p = 1/27 = 3.7%
    s = miti_summary.group_summary(_dialogues(counts), "g", bootstrap=20000, seed=1)
    pooled = s[s["definition"] == "pooled"].iloc[0]
    assert pooled["r_q"] == pytest.approx(3 / 4)
    assert (pooled["r_q_ci_low"], pooled["r_q_ci_high"]) == (lo, hi)


def test_not_annotated_counts_stay_undefined():
    d = _dialogues([{"SR": 1, "Q": 1}, {"CR": 1, "Q": 2}])
    d[["AF", "SEEK", "AUTO", "PERSUADE", "CONFRONT"]] = math.nan  # as AnnoMI: not annotated
    s = miti_summary.group_summary(d, "reference", bootstrap=200)
    assert s["pct_mi_adherent"].isna().all() and s["pct_mi_adherent_ci_high"].isna().all()
    assert list(s["definition"]) == ["pooled", "per_conversation"]
    assert list(s.columns) == miti.SUMMARY_COLUMNS


def test_score_matrix_is_summary_scores():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 4, size=(30, len(miti.CODES))).astype(float)
    g = rng.integers(1, 6, size=(30, len(miti.GLOBALS))).astype(float)
    got = miti_summary._score_matrix(c, g, c.sum(1))
    for i in range(30):
        want = miti.summary_scores(
            dict(zip(miti.CODES, c[i])), dict(zip(miti.GLOBALS, g[i])), c[i].sum()
        )
        np.testing.assert_allclose(got[i], [want[s] for s in miti.SCORES], equal_nan=True)
