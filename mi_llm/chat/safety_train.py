"""Retrain the crisis screen's learned layer and report what each layer adds, by cross-validation.

    python -m mi_llm.chat.safety_train [--train mi_llm/chat/data/crisis_train.jsonl]
        [--out mi_llm/chat/data/crisis_model.npz] [--folds 5] [--max-false-alarm 0.05]

Reads the training set (720 messages, mi_llm/chat/data/CRISIS_TRAIN.md), computes the embedded
Gemma 3 270M's features for each candidate layer (mi_llm.chat.safety_model), and chooses the layer,
the regularisation and the decision threshold by stratified K-fold cross-validation over the
training set alone: the threshold is the lowest whose out-of-fold false-alarm rate, combined with
the rules (flagged when either flags), stays at or under --max-false-alarm; among candidates, the
one with the highest combined out-of-fold recall wins. Then it fits that model on the whole set
and writes it. Folds are stratified by construct, so every construct and negative context is in
every fold. The frozen test set is never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mi_llm.chat import safety_model
from mi_llm.chat.safety_rules import CONSTRUCTS
from mi_llm.chat.safety_screen import rules_screen
from mi_llm.data.schema import DataError, jsonl_rows

LAYERS = (6, 9, 12, 15)
C_GRID = (0.01, 0.03, 0.1)
NEGATIVE_CONTEXTS = (
    "negation", "third_party", "clinical", "teaching", "research", "fiction", "past_resolved",
    "hyperbole", "everyday", "victim",
)  # fmt: skip
LANGS = ("zh-Hans", "zh-Hant", "en")


def read_set(path) -> list[dict]:
    """A labelled set (fields id, text, lang, label crisis|none, category, construct); errors name
    the file, record and field."""
    rows = []
    for i, r in jsonl_rows(path, ("id", "text", "lang", "label", "category", "construct")):
        where = f"line {i} ({r.get('id')})"
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise DataError(path, where, "text", "must be a non-empty string")
        if r["label"] not in ("crisis", "none"):
            raise DataError(path, where, "label", f"must be crisis or none, got {r['label']!r}")
        if r["lang"] not in LANGS:
            raise DataError(path, where, "lang", f"must be one of {LANGS}, got {r['lang']!r}")
        known = CONSTRUCTS if r["label"] == "crisis" else NEGATIVE_CONTEXTS
        if r["construct"] not in known:
            raise DataError(path, where, "construct", f"must be one of {sorted(known)}")
        want = CONSTRUCTS.get(r["construct"]) if r["label"] == "crisis" else None
        if r["category"] != want:
            raise DataError(path, where, "category", f"must be {want!r} for {r['construct']}")
        rows.append(r)
    return rows


def _cached_features(train, texts: list[str]) -> np.ndarray:
    """The training set's features, kept in the user cache by the set's and the prompt's hash (a
    retrain with other settings does not encode the messages again)."""
    import hashlib

    from mi_llm.models import embedded

    key = hashlib.sha256(
        (safety_model.sha256(train) + safety_model.PROMPT + repr(LAYERS)).encode()
    ).hexdigest()[:16]
    f = embedded.cache_root() / "crisis" / f"features-{key}.npy"
    if f.exists():
        return np.load(f)
    feats = safety_model.features(texts, LAYERS)
    f.parent.mkdir(parents=True, exist_ok=True)
    np.save(f, feats)
    return feats


def _classes(rows) -> list[str]:
    return ["none" if r["label"] == "none" else r["construct"] for r in rows]


def _fit(x, y, C):
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=3000)
    clf.fit((x - mean) / scale, y)
    return {
        "classes": np.array(clf.classes_),
        "coef": clf.coef_.astype(np.float32),
        "intercept": clf.intercept_.astype(np.float32),
        "mean": mean.astype(np.float32),
        "scale": scale.astype(np.float32),
    }


def out_of_fold(x, y, C, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(crisis) of each row (folds stratified by construct)."""
    from sklearn.model_selection import StratifiedKFold

    p = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        m = _fit(x[tr], np.array(y)[tr], C)
        p[te] = safety_model.decide(x[te], m)[0]
    return p


def choose_threshold(p, rules, crisis, max_fa: float) -> float:
    """The lowest threshold whose combined (rules or model) false-alarm rate is <= max_fa."""
    neg = ~crisis
    for t in np.round(np.arange(0.05, 1.0, 0.01), 2):
        if ((p >= t) | rules)[neg].mean() <= max_fa:
            return float(t)
    return 1.0


def rates(flags, crisis) -> str:
    tp, fp = int(flags[crisis].sum()), int(flags[~crisis].sum())
    return (
        f"recall {tp}/{crisis.sum()} = {tp / crisis.sum():.3f}, "
        f"false alarms {fp}/{(~crisis).sum()} = {fp / (~crisis).sum():.3f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", default=str(safety_model.packaged(safety_model.TRAIN_FILE)),
                    help="the training set (JSONL; default: the shipped one)")  # fmt: skip
    ap.add_argument("--out", default=str(safety_model.packaged(safety_model.MODEL_FILE)),
                    help="where to write the model (default: the shipped file)")  # fmt: skip
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    ap.add_argument("--max-false-alarm", type=float, default=0.05,
                    help="combined out-of-fold false-alarm rate the threshold keeps to (default 0.05)")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        rows = read_set(a.train)
    except (DataError, OSError) as e:
        print(f"safety_train: {e}", file=sys.stderr)
        return 2
    crisis = np.array([r["label"] == "crisis" for r in rows])
    y = _classes(rows)
    rules = np.array([rules_screen(r["text"]).flagged for r in rows])
    print(f"[safety_train] {len(rows)} messages ({crisis.sum()} crisis) from {a.train}")
    print(f"  rules alone (no fitting): {rates(rules, crisis)}")
    print(f"  features of layers {LAYERS} (embedded Gemma 3 270M) ...", flush=True)
    feats = _cached_features(a.train, [r["text"] for r in rows])
    best = None
    for li, layer in enumerate(LAYERS):
        for C in C_GRID:
            p = out_of_fold(feats[:, li], y, C, a.folds)
            t = choose_threshold(p, rules, crisis, a.max_false_alarm)
            both = (p >= t) | rules
            recall = both[crisis].mean()
            print(
                f"  layer {layer:>2} C={C:<5} threshold {t:.2f}: model {rates(p >= t, crisis)}; "
                f"combined {rates(both, crisis)}"
            )
            if best is None or recall > best[0]:
                best = (recall, layer, li, C, t, p)
    _, layer, li, C, t, p = best
    model = _fit(feats[:, li], y, C)
    both = (p >= t) | rules
    cv = {
        "folds": a.folds,
        "n": len(rows),
        "rules": rates(rules, crisis),
        "model": rates(p >= t, crisis),
        "combined": rates(both, crisis),
        "per_construct_combined": {
            c: f"{int(both[[r['construct'] == c for r in rows]].sum())}/36"
            for c in sorted({r["construct"] for r in rows})
        },
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        **model,
        threshold=np.float32(t),
        layer=np.int32(layer),
        C=np.float32(C),
        prompt=np.array(safety_model.PROMPT),
        train_sha256=np.array(safety_model.sha256(a.train)),
        cv=np.array(json.dumps(cv, ensure_ascii=False)),
    )
    print(f"[safety_train] chose layer {layer}, C={C}, threshold {t:.2f}; out of fold:")
    for k in ("rules", "model", "combined"):
        print(f"  {k:<9} {cv[k]}")
    print(f"  wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
