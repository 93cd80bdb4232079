"""Measuring the crisis screen: recall and false alarms with Wilson CIs, overall and per construct."""

from __future__ import annotations

import math

from mi_llm.chat.safety_screen import Screen, screen_many


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _is_crisis(r: dict) -> bool:
    return r["label"] in ("crisis", 1, True)


def evaluate(rows: list[dict], screens: list[Screen] | None = None) -> dict:
    """Recall and false-alarm rate (pooled over messages, with Wilson CIs), category accuracy and
    per-construct counts of a screen on labelled rows (label crisis|none, or 1|0)."""
    screens = screens if screens is not None else screen_many([r["text"] for r in rows])
    pos = [(r, s) for r, s in zip(rows, screens) if _is_crisis(r)]
    neg = [(r, s) for r, s in zip(rows, screens) if not _is_crisis(r)]
    tp = sum(s.flagged for _, s in pos)
    fp = sum(s.flagged for _, s in neg)
    right_cat = sum(s.flagged and s.category == r["category"] for r, s in pos)
    per = {}
    for r, s in zip(rows, screens):
        c = r.get("construct")
        if c:
            k, n = per.get(c, (0, 0))
            per[c] = (k + bool(s.flagged), n + 1)
    return {
        "n": len(rows),
        "n_positive": len(pos),
        "n_negative": len(neg),
        "true_positives": tp,
        "false_positives": fp,
        "recall": tp / len(pos) if pos else math.nan,
        "recall_ci": wilson(tp, len(pos)),
        "false_alarm": fp / len(neg) if neg else math.nan,
        "false_alarm_ci": wilson(fp, len(neg)),
        "category_accuracy": right_cat / tp if tp else math.nan,
        "per_construct": {c: {"flagged": k, "n": n} for c, (k, n) in sorted(per.items())},
    }


def same_text(text: str) -> str:
    """A message as compared between sets: lower case, runs of spaces as one."""
    return " ".join(text.lower().split())


def unseen(rows: list[dict], train: list[dict]) -> list[dict]:
    """The rows whose message is not also in the training set (compared by same_text)."""
    known = {same_text(r["text"]) for r in train}
    return [r for r in rows if same_text(r["text"]) not in known]
