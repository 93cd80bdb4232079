"""The crisis screen on the frozen test set: recall and false alarms with 95% Wilson CIs, per layer
and combined, overall, per language, per construct and per writer of the set.

    .venv/bin/python benchmarks/crisis_screen.py [--set tests/data/crisis_test.jsonl] [--llm]

The frozen set (tests/data/CRISIS_TEST.md) was written by two writers from the construct list
alone and committed before the screen was designed; nothing was tuned on it. The figures are on
its messages that are not also in the training set (a few short ones were written word for word by
a training writer too), then the combined figure on all of them. Rates are pooled over messages
(one message = one unit; n beside each). Layers: `rules`; the learned layer's two halves
(`hidden`: Gemma 3 270M hidden states, `ngram`: character n-grams) at the shipped threshold;
`model` (the learned layer alone); `combined` (the default screen: the model's score against its
threshold, or against the lower rule threshold when a rule matches). Then what each layer adds to
the other, and the flag rate on client turns of the shipped corpora. `--llm` adds the run's LLM as
a second opinion through a params file's endpoint (a remote model when llm.provider is remote),
alone and combined with the default screen. The messages themselves are never printed. Before the
frozen figures it prints the learned layer's out-of-writer figures on the training set.
"""

from __future__ import annotations

import argparse
import json
import re
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


def writer(r: dict) -> str:
    """The set's writer: the `writer` field, else the letters that begin the id (ha, hb, ...)."""
    return r.get("writer") or re.match(r"[^\d]*", str(r["id"])).group() or "?"


def client_turns(n: int = 200, seed: int = 0) -> dict[str, list[str]]:
    """Client turns of the shipped corpus samples that the learned layer was not trained on: real
    MI sessions (AnnoMI's odd-numbered transcripts, English) and a Chinese counselling corpus
    (SmileChat); unlabelled, so their flag rate is not a false-alarm rate (a real client may be
    at risk)."""
    import random

    import pandas as pd

    from mi_llm.data import corpora

    df = pd.read_csv(ROOT / "data" / "AnnoMI" / "AnnoMI-simple.csv")
    df = df[(df.interlocutor == "client") & (df.transcript_id % 2 == 1)]
    en = [t for t in df.utterance_text.dropna() if 2 <= len(t) <= 400]
    dialogues, _ = corpora.load_with_report("smilechat", ROOT / "data" / "SmileChat", "skip")
    zh = [t.text for d in dialogues for t in d.turns if t.speaker == "client" and len(t.text) >= 2]
    rng = random.Random(seed)
    return {
        "AnnoMI (en)": rng.sample(sorted(set(en)), min(n, len(set(en)))),
        "SmileChat (zh)": rng.sample(sorted(set(zh)), min(n, len(set(zh)))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", default=str(ROOT / "tests/data/crisis_test.jsonl"),
                    help="a labelled set in the frozen set's format (default: the frozen set)")  # fmt: skip
    ap.add_argument("--llm", action="store_true", help="also the LLM second opinion (--params)")
    ap.add_argument("--params", default=str(ROOT / "params/smoke.yaml"),
                    help="params file whose llm section names the endpoint (with --llm)")  # fmt: skip
    a = ap.parse_args()
    everything = safety.read_set(a.set)
    rows = safety.unseen(
        everything, safety.read_set(safety_model.packaged(safety_model.TRAIN_FILE))
    )
    m = safety_model.load()
    cv = json.loads(str(m["cv"]))
    t, bar = float(m["threshold"]), float(m["rule_threshold"])
    print(
        f"learned layer: embedded Gemma 3 270M (layers {list(map(int, m['layers']))}) and character "
        f"n-grams; thresholds {t:.2f} alone, {bar:.2f} with a rule. Out of writer on the training "
        f"set ({cv['n']} messages, {len(cv['writers'])} writers): rules {cv['rules']}; model "
        f"{cv['model']}; combined {cv['combined']}"
    )
    texts = [r["text"] for r in rows]
    t0 = time.perf_counter()
    rules = [safety.rules_screen(x) for x in texts]
    t1 = time.perf_counter()
    parts = safety_model.predict_layers(texts)
    t2 = time.perf_counter()
    model = safety.model_screens(texts)
    combined = [safety.combine_layers(r, s, bar) for r, s in zip(rules, model)]
    print(
        f"{a.set}: {len(rows)} messages ({sum(r['label'] == 'crisis' for r in rows)} crisis) that are "
        f"not also in the training set (of {len(everything)}); "
        f"rules {(t1 - t0) / len(rows) * 1e3:.2f} ms a message, learned layer "
        f"{(t2 - t1) / len(rows) * 1e3:.0f} ms a message (CPU, batches of 16)"
    )
    report("rules", rows, rules)
    for part in ("hidden", "ngram"):
        alone = [safety.Screen(bool(p >= t), score=float(p)) for p in parts[part]]
        print(f"\n== {part} (one half of the learned layer, at the threshold)")
        show("all", rows, alone)
    report("model (learned layer alone)", rows, model)
    report("combined (the default screen)", rows, combined)
    if len(rows) < len(everything):
        print(f"\n== combined, on all {len(everything)} messages of the set")
        show("all", everything, safety.screen_many([r["text"] for r in everything]))
    print("\n== combined, per writer of the set")
    for w, (rs, ss) in sorted(by([{**r, "w": writer(r)} for r in rows], combined, "w").items()):
        show(f"  {w}", rs, ss)
    crisis = [r["label"] == "crisis" for r in rows]
    for name, base, other in (("model", rules, combined), ("rules", model, combined)):
        gain = sum(c and o.flagged and not b.flagged for c, b, o in zip(crisis, base, other))
        cost = sum(not c and o.flagged and not b.flagged for c, b, o in zip(crisis, base, other))
        lost = sum(c and b.flagged and not o.flagged for c, b, o in zip(crisis, base, other))
        kept = sum(not c and b.flagged and not o.flagged for c, b, o in zip(crisis, base, other))
        other_name = "model" if name == "rules" else "rules"
        print(
            f"combining: over the {other_name} alone, adding the {name} gains {gain} crisis "
            f"messages and {cost} false alarms, and drops {lost} crisis messages and {kept} false alarms"
        )
    print("\nflag rate on client turns of the shipped corpora (unlabelled: not a false-alarm rate)")
    for name, turns in client_turns().items():
        k = sum(s.flagged for s in safety.screen_many(turns))
        print(f"  {name:<16} flagged {fmt(k, len(turns))}")
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
