"""Crisis screen on the labelled set: recall and false-alarm rate with 95% Wilson CIs, per split.

    .venv/bin/python benchmarks/crisis_screen.py [--set tests/data/crisis_screen.jsonl] [--llm]

The rules were tuned on the `dev` part only; `heldout` was not looked at while writing them.
`--llm` adds the LLM classifier through params/smoke.yaml's endpoint (the embedded model by default;
a remote one when llm.provider is remote), alone and combined with the rules.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mi_llm.chat import safety

ROOT = Path(__file__).resolve().parents[1]


def show(name: str, e: dict) -> None:
    r, f = e["recall_ci"], e["false_alarm_ci"]
    print(
        f"{name:<22} n={e['n']:>3} ({e['n_positive']} crisis, {e['n_negative']} not)  "
        f"recall {e['recall']:.3f} [{r[0]:.3f}, {r[1]:.3f}]  "
        f"false alarms {e['false_alarm']:.3f} [{f[0]:.3f}, {f[1]:.3f}]  "
        f"category right {e['category_accuracy']:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--set", default=str(ROOT / "tests/data/crisis_screen.jsonl"))
    ap.add_argument(
        "--llm", action="store_true", help="also the LLM classifier (params/smoke.yaml)"
    )
    ap.add_argument("--params", default=str(ROOT / "params/smoke.yaml"))
    a = ap.parse_args()
    rows = safety.read_labelled(a.set)
    t0 = time.perf_counter()
    screens = [safety.screen(r["text"]) for r in rows]
    dt = time.perf_counter() - t0
    print(f"rules: {len(rows)} messages in {dt * 1000:.1f} ms ({dt / len(rows) * 1e6:.0f} µs each)")
    splits = {"dev (tuned on)": "dev", "heldout": "heldout"}
    for name, split in splits.items():
        idx = [i for i, r in enumerate(rows) if r.get("split") == split]
        show(f"rules {name}", safety.evaluate([rows[i] for i in idx], [screens[i] for i in idx]))
    e = safety.evaluate(rows, screens)
    show("rules all", e)
    for lang in ("zh", "en"):
        idx = [i for i, r in enumerate(rows) if r.get("lang") == lang]
        show(
            f"rules all {lang}", safety.evaluate([rows[i] for i in idx], [screens[i] for i in idx])
        )
    held = [i for i, r in enumerate(rows) if r.get("split") == "heldout"]
    for i in held:
        if rows[i]["label"] != screens[i].flagged:
            print(
                f"  held-out {'missed' if rows[i]['label'] else 'false alarm'}: {rows[i]['text']}"
            )
    if a.llm:
        from mi_llm import params
        from mi_llm.llm import api, cache

        P = params.load(a.params)
        with api.endpoint(P.llm) as ep:
            t0 = time.perf_counter()
            out = safety.screen_llm(
                ep, [r["text"] for r in rows], P.llm, cache_path=cache.cache_path(P)
            )
            print(f"llm ({P.llm.model}): {time.perf_counter() - t0:.1f} s")
        show("llm all", safety.evaluate(rows, out))
        show(
            "rules + llm all",
            safety.evaluate(rows, [safety.combine(s, o) for s, o in zip(screens, out)]),
        )


if __name__ == "__main__":
    main()
