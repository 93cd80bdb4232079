"""Retrain the crisis screen's learned layer and report, across writers, what each layer adds.

    python -m mi_llm.chat.safety_train [--train mi_llm/chat/data/crisis_train.jsonl]
        [--out mi_llm/chat/data/crisis_model.npz] [--max-false-alarm 0.05] [--max-ordinary 0.02]

The training set (mi_llm/chat/data/CRISIS_TRAIN.md) holds messages written by several writers and
ordinary client turns from the shipped corpora (field `writer`; `corpus:...` for the latter). A
screen has to hold on messages by people it never saw, and a writer's own phrasing makes ordinary
K-fold figures optimistic, so every choice here is made by leave-one-writer-out cross-validation:
each writer's (or corpus') messages are scored by models fitted on the others' only. From those
out-of-writer scores it chooses the two regressions' strengths and the two thresholds of the
default screen:

    flagged = P(crisis) >= threshold  or  (a rule matches and P(crisis) >= rule_threshold)

as the pair with the highest recall whose false-alarm rate on the written negatives stays at or
under --max-false-alarm and whose flag rate on the ordinary turns stays at or under
--max-ordinary. Then it fits the models on the whole set and writes them. The frozen test set
(tests/data/crisis_test.jsonl) is never read here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from mi_llm.chat import safety_model
from mi_llm.chat.safety_rules import CONSTRUCTS
from mi_llm.chat.safety_screen import rules_screen
from mi_llm.data.schema import DataError, jsonl_rows

C_HIDDEN = (0.01, 0.03)
C_NGRAM = (10.0, 30.0)
NEGATIVE_CONTEXTS = (
    "negation", "third_party", "clinical", "teaching", "research", "fiction", "past_resolved",
    "hyperbole", "everyday", "victim",
)  # fmt: skip
LANGS = ("zh-Hans", "zh-Hant", "en")
ORDINARY = "corpus:"  # writer prefix of ordinary client turns taken from the shipped corpora


def read_set(path) -> list[dict]:
    """A labelled set (fields id, text, lang, label crisis|none, category, construct; `writer`
    where the set has several); errors name the file, record and field."""
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
        if "writer" in r and (not isinstance(r["writer"], str) or not r["writer"]):
            raise DataError(path, where, "writer", "must be a non-empty string")
        rows.append(r)
    return rows


def cached_features(texts: list[str]) -> np.ndarray:
    """The messages' hidden-state features, kept in the user cache per message under the prompt's
    and the layers' hash: a retrain, or a set with messages added, encodes only new messages."""
    from mi_llm.models import embedded

    key = hashlib.sha256((safety_model.PROMPT + repr(safety_model.LAYERS)).encode()).hexdigest()
    f = embedded.cache_root() / "crisis" / f"features-{key[:16]}.npz"
    ids = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
    known = {}
    if f.exists():
        with np.load(f) as z:
            known = dict(zip(z["ids"].tolist(), z["x"]))
    todo = {t: i for t, i in zip(texts, ids) if i not in known}
    if todo:
        for i, row in zip(todo.values(), safety_model.features(list(todo), progress=True)):
            known[i] = row
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.array(list(known)), x=np.stack(list(known.values())))
        tmp.replace(f)
    return np.stack([known[i] for i in ids]).astype(np.float32)


def fit_hidden(x, crisis, C) -> dict:
    """The hidden-state regression (standardised features, classes balanced)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    clf.fit((x - mean) / scale, crisis)
    return {
        "h_coef": clf.coef_[0].astype(np.float32),
        "h_intercept": np.float32(clf.intercept_[0]),
        "h_mean": mean.astype(np.float32),
        "h_scale": scale.astype(np.float32),
    }


def fit_ngram(texts, crisis, C) -> dict:
    """The character n-gram regression, with its vocabulary and IDF weights."""
    from sklearn.linear_model import LogisticRegression

    v = safety_model.ngram_vectorizer()
    g = v.fit_transform(texts)
    clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(g, crisis)
    vocab = sorted(v.vocabulary_, key=v.vocabulary_.get)
    return {
        "g_vocab": np.array(vocab),
        "g_idf": v.idf_.astype(np.float32),
        "g_coef": clf.coef_[0].astype(np.float32),
        "g_intercept": np.float32(clf.intercept_[0]),
    }


def fit_constructs(x, constructs, hidden: dict, C) -> dict:
    """The construct regression over crisis messages (on the hidden regression's scaling)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=3000)
    clf.fit((x - hidden["h_mean"]) / hidden["h_scale"], constructs)
    return {
        "k_classes": np.array(clf.classes_),
        "k_coef": clf.coef_.astype(np.float32),
        "k_intercept": clf.intercept_.astype(np.float32),
    }


def folds_of(rows) -> list[str]:
    """The cross-validation fold of each row: its writer; an ordinary turn joins one writer's fold
    with the rest of its dialogue (id `<dialogue>-<turn>`), so that every fold is scored by models
    that saw ordinary talk of both languages, but never from the same dialogue."""
    import zlib

    written = sorted({r["writer"] for r in rows if not r["writer"].startswith(ORDINARY)})
    out = []
    for r in rows:
        if r["writer"].startswith(ORDINARY) and written:
            dialogue = str(r["id"]).rsplit("-", 1)[0]
            out.append(written[zlib.crc32(dialogue.encode()) % len(written)])
        else:
            out.append(r["writer"])
    return out


def out_of_writer(rows, x, C_h, C_g) -> dict:
    """Each message's P(crisis) (hidden, ngram, model) and construct from models fitted on the
    other writers' messages."""
    texts = [r["text"] for r in rows]
    crisis = np.array([r["label"] == "crisis" for r in rows])
    folds = np.array(folds_of(rows))
    out = {
        "hidden": np.zeros(len(rows)),
        "ngram": np.zeros(len(rows)),
        "construct": [""] * len(rows),
    }
    for w in sorted(set(folds)):
        te, tr = folds == w, folds != w
        m = fit_hidden(x[tr], crisis[tr], C_h)
        m.update(fit_ngram([t for t, k in zip(texts, tr) if k], crisis[tr], C_g))
        pos = tr & crisis
        m.update(fit_constructs(x[pos], [r["construct"] for r in np.array(rows)[pos]], m, C_h))
        m["vectorizer"] = safety_model.ngram_vectorizer(m["g_vocab"], m["g_idf"])
        out["hidden"][te] = safety_model.hidden_probability(x[te], m)
        out["ngram"][te] = safety_model.ngram_probability([t for t, k in zip(texts, te) if k], m)
        for i, c in zip(np.where(te)[0], safety_model.likeliest_construct(x[te], m)):
            out["construct"][i] = c
    out["model"] = (out["hidden"] + out["ngram"]) / 2
    return out


GRID = np.round(np.arange(0.0, 1.0, 0.02), 2)


def choose_thresholds(p, rules, crisis, max_fa: float, ordinary=None, max_ordinary: float = 1.0):
    """(threshold, rule_threshold, flags): the pair with the highest recall whose false-alarm rate
    on the written negatives is <= max_fa and whose flag rate on ordinary turns (a mask; none by
    default) is <= max_ordinary (ties: the higher thresholds)."""
    ordinary = np.zeros_like(crisis) if ordinary is None else ordinary
    negative = ~crisis & ~ordinary
    best = (-1.0, 1.0, 1.0, np.zeros_like(crisis))
    for t in GRID[::-1]:
        for tr in GRID[GRID <= t][::-1]:
            flags = (p >= t) | (rules & (p >= tr))
            fine = flags[negative].mean() <= max_fa
            if ordinary.any():
                fine = fine and flags[ordinary].mean() <= max_ordinary
            if fine and flags[crisis].mean() > best[0]:
                best = (flags[crisis].mean(), float(t), float(tr), flags)
    return best[1], best[2], best[3]


def rates(flags, crisis, ordinary=None) -> str:
    """Recall, false alarms on the written negatives and, where there are any, ordinary turns
    flagged."""
    ordinary = np.zeros_like(crisis) if ordinary is None else ordinary
    negative = ~crisis & ~ordinary
    out = []
    for name, mask in (("recall", crisis), ("false alarms", negative), ("ordinary turns flagged", ordinary)):  # fmt: skip
        if mask.any():
            k, n = int(flags[mask].sum()), int(mask.sum())
            out.append(f"{name} {k}/{n} = {k / n:.3f}")
    return ", ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", default=str(safety_model.packaged(safety_model.TRAIN_FILE)),
                    help="the training set (JSONL with a writer field; default: the shipped one)")  # fmt: skip
    ap.add_argument("--out", default=str(safety_model.packaged(safety_model.MODEL_FILE)),
                    help="where to write the model (default: the shipped file)")  # fmt: skip
    ap.add_argument("--max-false-alarm", type=float, default=0.05,
                    help="out-of-writer false-alarm rate the thresholds keep to (default 0.05)")  # fmt: skip
    ap.add_argument("--max-ordinary", type=float, default=0.02,
                    help="out-of-writer flag rate on ordinary client turns (default 0.02)")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        rows = read_set(a.train)
        missing = next((r["id"] for r in rows if "writer" not in r), None)
        if missing:
            raise DataError(a.train, missing, "writer", "missing: cross-validation is by writer")
    except (DataError, OSError) as e:
        print(f"safety_train: {e}", file=sys.stderr)
        return 2
    crisis = np.array([r["label"] == "crisis" for r in rows])
    writers = np.array([r["writer"] for r in rows])
    ordinary = np.char.startswith(writers.astype(str), ORDINARY)
    rules = np.array([rules_screen(r["text"]).flagged for r in rows])
    n_corpora = len(set(writers[ordinary]))
    print(f"[safety_train] {len(rows)} messages ({crisis.sum()} crisis) by "
          f"{len(set(writers)) - n_corpora} writers and from {n_corpora} "
          f"{'corpus' if n_corpora == 1 else 'corpora'}, {a.train}")  # fmt: skip
    print(f"  rules alone (no fitting): {rates(rules, crisis, ordinary)}")
    print(f"  features: layers {safety_model.LAYERS} of the embedded Gemma 3 270M ...", flush=True)
    x = cached_features([r["text"] for r in rows])
    best = None
    for C_h in C_HIDDEN:
        for C_g in C_NGRAM:
            p = out_of_writer(rows, x, C_h, C_g)
            t, tr, flags = choose_thresholds(
                p["model"], rules, crisis, a.max_false_alarm, ordinary, a.max_ordinary
            )
            print(f"  C_hidden={C_h} C_ngram={C_g}: thresholds {t:.2f}/{tr:.2f}, combined "
                  f"{rates(flags, crisis, ordinary)}", flush=True)  # fmt: skip
            if best is None or flags[crisis].mean() > best[0]:
                best = (flags[crisis].mean(), C_h, C_g, t, tr, p, flags)
    _, C_h, C_g, t, tr, p, flags = best
    layers = {
        "rules": rules,
        "hidden": p["hidden"] >= t,
        "ngram": p["ngram"] >= t,
        "model": p["model"] >= t,
        "combined": flags,
    }
    right = [c == r["construct"] for c, r, f in zip(p["construct"], rows, flags) if f and r["label"] == "crisis"]  # fmt: skip
    cv = {
        "scheme": "leave-one-writer-out",
        "n": len(rows),
        "writers": {w: int((writers == w).sum()) for w in sorted(set(writers))},
        **{k: rates(v, crisis, ordinary) for k, v in layers.items()},
        "per_writer_combined": {
            w: rates(flags[writers == w], crisis[writers == w], ordinary[writers == w])
            for w in sorted(set(writers))
        },
        "construct_accuracy_of_flagged_crisis": round(float(np.mean(right)), 3),
    }
    model = fit_hidden(x, crisis, C_h)
    model.update(fit_ngram([r["text"] for r in rows], crisis, C_g))
    model.update(fit_constructs(x[crisis], [r["construct"] for r in np.array(rows)[crisis]], model, C_h))  # fmt: skip
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        **model,
        threshold=np.float32(t),
        rule_threshold=np.float32(tr),
        layers=np.array(safety_model.LAYERS, dtype=np.int32),
        C_hidden=np.float32(C_h),
        C_ngram=np.float32(C_g),
        prompt=np.array(safety_model.PROMPT),
        train_sha256=np.array(safety_model.sha256(a.train)),
        cv=np.array(json.dumps(cv, ensure_ascii=False)),
    )
    print(f"[safety_train] chose C_hidden={C_h}, C_ngram={C_g}, thresholds {t:.2f} "
          f"(alone) and {tr:.2f} (with a rule); out of writer:")  # fmt: skip
    for k in layers:
        print(f"  {k:<9} {cv[k]}")
    for w, s in cv["per_writer_combined"].items():
        print(f"  writer {w:<6} combined {s}")
    print(
        f"  construct right for {cv['construct_accuracy_of_flagged_crisis']:.3f} of flagged crisis"
    )
    print(f"  wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
