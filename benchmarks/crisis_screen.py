"""The crisis screen on the frozen test set: recall and false alarms with 95% Wilson CIs, per layer
and combined, overall, per language and per construct.

    .venv/bin/python benchmarks/crisis_screen.py [--set tests/data/crisis_heldout.jsonl] [--llm]

The frozen set (tests/data/CRISIS_HELDOUT.md) was written from the construct list alone and
committed before the screen was designed; nothing was tuned on it. Rates are pooled over messages
(one message = one unit; n beside each). Layers: `rules`, `model` (the learned layer alone),
`combined` (the default screen: flagged when either flags). `--llm` adds the run's LLM as a second
opinion through a params file's endpoint (a remote model when llm.provider is remote), alone and
combined with the default screen. The messages themselves are never printed. Before the frozen
figures it prints the learned layer's cross-validated figures on the training set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mi_llm.chat import safety, safety_model

ROOT = Path(__file__).resolve().parents[1]


def fmt(k: int, n: int) -> str:
    lo, hi = safety.wilson(k, n)
    return f"{k:>3}/{n:<3} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "  n = 0"


def show(name: str, rows: list[dict], screens: list) -> dict:
    e = safety.evaluate(rows, screens)
    print(
        f"{name:<16} recall {fmt(e['true_positives'], e['n_positive'])}   "
        f"false alarms {fmt(e['false_positives'], e['n_negative'])}"
    )
    return e


def by(rows, screens, key) -> dict:
    groups = {}
    for r, s in zip(rows, screens):
        groups.setdefault(r[key], ([], []))
        groups[r[key]][0].append(r)
        groups[r[key]][1].append(s)
    return groups


def report(layer: str, rows: list[dict], screens: list) -> None:
    print(f"\n== {layer}")
    show("all", rows, screens)
    for lang, (rs, ss) in sorted(by(rows, screens, "lang").items()):
        show(f"  {lang}", rs, ss)
    print(
        "  per construct (crisis: share flagged = recall; negative context: share flagged = false alarms)"
    )
    for construct, (rs, ss) in sorted(
        by(rows, screens, "construct").items(), key=lambda kv: (kv[1][0][0]["label"], kv[0])
    ):
        k = sum(s.flagged for s in ss)
        kind = "crisis" if rs[0]["label"] == "crisis" else "none  "
        print(f"    {kind} {construct:<16} flagged {fmt(k, len(rs))}")
    pos = [(r, s) for r, s in zip(rows, screens) if r["label"] == "crisis" and s.flagged]
    right = sum(s.category == r["category"] for r, s in pos)
    print(f"  category right among flagged crisis messages: {fmt(right, len(pos))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", default=str(ROOT / "tests/data/crisis_heldout.jsonl"),
                    help="a labelled set in the frozen set's format (default: the frozen set)")  # fmt: skip
    ap.add_argument("--llm", action="store_true", help="also the LLM second opinion (--params)")
    ap.add_argument("--params", default=str(ROOT / "params/smoke.yaml"),
                    help="params file whose llm section names the endpoint (with --llm)")  # fmt: skip
    a = ap.parse_args()
    rows = safety.read_set(a.set)
    m = safety_model.load()
    cv = json.loads(str(m["cv"]))
    print(
        f"learned layer: embedded Gemma 3 270M, layer {int(m['layer'])}, threshold "
        f"{float(m['threshold']):.2f}; cross-validated on the training set ({cv['n']} messages, "
        f"{cv['folds']} folds): rules {cv['rules']}; model {cv['model']}; combined {cv['combined']}"
    )
    texts = [r["text"] for r in rows]
    t0 = time.perf_counter()
    rules = [safety.rules_screen(t) for t in texts]
    t1 = time.perf_counter()
    model = safety.model_screens(texts)
    t2 = time.perf_counter()
    combined = [safety.combine(r, s) for r, s in zip(rules, model)]
    print(
        f"{a.set}: {len(rows)} messages ({sum(r['label'] == 'crisis' for r in rows)} crisis); "
        f"rules {(t1 - t0) / len(rows) * 1e3:.2f} ms a message, learned layer "
        f"{(t2 - t1) / len(rows) * 1e3:.0f} ms a message (CPU, batches of 16)"
    )
    report("rules", rows, rules)
    report("model (learned layer alone)", rows, model)
    report("combined (the default screen)", rows, combined)
    added = sum(
        r["label"] == "crisis" and s.flagged and not ru.flagged
        for r, ru, s in zip(rows, rules, combined)
    )
    added_fa = sum(
        r["label"] == "none" and s.flagged and not ru.flagged
        for r, ru, s in zip(rows, rules, combined)
    )
    print(
        f"\nthe learned layer adds {added} crisis messages the rules miss and {added_fa} false alarms"
    )
    if a.llm:
        from mi_llm import params
        from mi_llm.llm import api, cache

        P = params.load(a.params)
        with api.endpoint(P.llm) as ep:
            out = safety.screen_llm(ep, texts, P.llm, cache_path=cache.cache_path(P))
        report(f"llm ({P.llm.model}) alone", rows, out)
        report("combined + llm", rows, [safety.combine(c, o) for c, o in zip(combined, out)])


if __name__ == "__main__":
    main()
