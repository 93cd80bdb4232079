"""How much the BLEU/ROUGE recipe moves the numbers: the raw recipe (LLaMA-Factory's) vs content-only.

Pairs of real counselor turns from the shipped CPsyCounD sample: each counselor turn scored as the
"reply" to the next counselor turn of the same dialogue as its "reference" (a fixed, reproducible
set of Chinese pairs with the punctuation of real replies). Prints the mean of each metric under
both scorings and the largest difference on one pair.

    .venv/bin/python benchmarks/metric_recipes.py [--pairs 300]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from mi_llm.data import corpora
from mi_llm.eval import metrics
from mi_llm.params import ROOT


def pairs(n: int) -> list[tuple[str, str]]:
    """Up to n (hypothesis, reference) pairs of consecutive counselor turns."""
    out = []
    for d in corpora.load("cpsycound", ROOT / "data/CPsyCounD/Data"):
        turns = [t.text for t in d.turns if t.speaker == "counselor"]
        out += list(itertools.pairwise(turns))
        if len(out) >= n:
            break
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=300)
    a = ap.parse_args()
    ps = pairs(a.pairs)
    scores = {}
    for scoring in metrics.SCORINGS:
        rows = [
            {"bleu4": metrics.bleu4(h, r, scoring), **metrics.rouge(h, r, scoring)} for h, r in ps
        ]
        scores[scoring] = {m: np.array([x[m] for x in rows]) for m in metrics.METRICS}
    print(f"{len(ps)} pairs of consecutive CPsyCounD counselor turns")
    print(f"{'metric':8} {'raw':>6} {'content':>8} {'max |diff| per pair':>20}")
    for m in metrics.METRICS:
        raw, content = scores["raw"][m], scores["content"][m]
        print(f"{m:8} {raw.mean():6.1f} {content.mean():8.1f} {np.abs(raw - content).max():20.1f}")


if __name__ == "__main__":
    main()
