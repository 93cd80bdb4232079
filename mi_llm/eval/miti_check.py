"""The MITI coder checked against human codes: AnnoMI's therapist annotations as MITI behaviours
(the reference rows and the coder-check sample) and Welivita & Pu's gold sentences (a baseline).

The coder codes utterances (mi_llm.eval.segment cuts each sampled AnnoMI utterance or gold sentence
as it cuts a generated reply); the human code is of the whole AnnoMI utterance, so the comparison
is of the set of codes over its utterances (an AnnoMI utterance that is a question and a reflection
compares as 'Q+CR'). A coder answer that is missing for any of them leaves the item uncompared.
Kappa CIs resample AnnoMI sessions (transcripts); the gold sentences carry no session, so each is
its own cluster there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm.data.schema import DataError
from mi_llm.eval import miti
from mi_llm.stats import cohen_kappa

# ----------------------------------------------------------------------------- AnnoMI reference
# AnnoMI's therapist annotations as MITI behaviours. AnnoMI-full says for each utterance whether it
# holds a question, a reflection (simple/complex) and therapist input (information, advice, ...),
# each as its annotators' majority: an utterance with a question and a reflection counts as both,
# the MITI rule. Information is GI; advice does not say whether permission was asked (Persuade vs
# Persuade with Permission), so it is compared (ADVICE) but not counted; negotiation and options
# have no MITI counterpart; AnnoMI does not annotate affirm, seeking collaboration, autonomy or
# confront. Those counts are NaN (not annotated), so are the MI-adherence scores; AnnoMI has no
# global ratings, so technical and relational are NaN for it. Without AnnoMI-full, the one
# main_therapist_behaviour of AnnoMI-simple is used.
ANNOMI_CODES = ("SR", "CR", "Q", "GI")  # the MITI counts AnnoMI's annotations give
# comparison labels (coder check): AnnoMI's behaviours, and what each coder answer compares as
ADVICE, OTHER = "ADVICE", "OTHER"
LABEL_ORDER = ("Q", "SR", "CR", "GI", ADVICE, OTHER)
CODER_LABEL = {
    **{k: k for k in ANNOMI_CODES},
    "PERSUADE": ADVICE,
    "PERSUADE_PERM": ADVICE,
    "AF": OTHER,
    "SEEK": OTHER,
    "AUTO": OTHER,
    "CONFRONT": OTHER,
}


def _label(behaviours) -> str:
    """A set of comparison behaviours as one label, 'Q+CR'; OTHER when there are none."""
    got = set(behaviours)
    if len(got) > 1:
        got.discard(OTHER)  # an affirmation beside a question compares as the question
    return "+".join(k for k in LABEL_ORDER if k in got) or OTHER


def coder_label(codes) -> str | None:
    """The comparison label of an automatic coding (None: missing)."""
    return None if codes is None else _label(CODER_LABEL[c] for c in codes)


def annomi_behaviours(a: dict) -> list[str] | None:
    """Comparison behaviours (Q, SR, CR, GI, ADVICE) of one AnnoMI therapist annotation; [] for
    none of them; None when AnnoMI's code has no MITI counterpart or lacks its subtype."""
    reflection = {"simple": "SR", "complex": "CR"}
    given = {"information": "GI", "advice": ADVICE}
    if "question_exists" in a and "reflection_exists" in a:  # AnnoMI-full: one column each
        out = ["Q"] if a["question_exists"] == "True" else []
        if a["reflection_exists"] == "True":
            if a.get("reflection_subtype") not in reflection:
                return None
            out.append(reflection[a["reflection_subtype"]])
        if a.get("therapist_input_exists") == "True":
            if a.get("therapist_input_subtype") in given:
                out.append(given[a["therapist_input_subtype"]])
            elif not out:
                return None  # negotiation or options alone
        return out
    main = a.get("main_therapist_behaviour")
    if main == "reflection":
        return (
            [reflection[a["reflection_subtype"]]]
            if a.get("reflection_subtype") in reflection
            else None
        )
    if main == "question":
        return ["Q"]
    if main == "therapist_input":
        return (
            [given[a["therapist_input_subtype"]]]
            if a.get("therapist_input_subtype") in given
            else None
        )
    return [] if main == "other" else None


def read_annomi(path) -> pd.DataFrame:
    """AnnoMI (mi_llm.data.corpora's loader) as one row per utterance with its human codes.

    Columns: transcript_id, mi_quality, utterance_id, interlocutor (therapist | client),
    utterance_text, behaviours (therapists: list of Q/SR/CR/GI/ADVICE, None without a MITI
    counterpart) and label (their comparison label for the coder check).
    """
    from mi_llm.data import corpora

    rows = []
    for d in corpora.load("annomi", Path(path)):
        for i, t in enumerate(d.turns):
            th = t.speaker == "counselor"
            beh = annomi_behaviours(t.annotations) if th else None
            rows.append(
                {
                    "transcript_id": int(d.id),
                    "mi_quality": d.meta["mi_quality"],
                    "utterance_id": i,
                    "interlocutor": "therapist" if th else "client",
                    "utterance_text": t.text,
                    "behaviours": beh,
                    "label": None if beh is None else _label(beh),
                }
            )
    return pd.DataFrame(rows)


def annomi_dialogues(annomi: pd.DataFrame) -> pd.DataFrame:
    """Per AnnoMI session, dialogue_table's columns from the human codes (quality as variant)."""
    th = annomi[annomi["interlocutor"] == "therapist"]
    rows = []
    for (tid, quality), d in th.groupby(["transcript_id", "mi_quality"]):
        coded = [b for b in d["behaviours"] if b is not None]
        counts = {
            k: sum(k in b for b in coded) if k in ANNOMI_CODES else math.nan for k in miti.CODES
        }
        rows.append(
            {
                "model": "annomi",
                "variant": quality,
                "dialogue_id": str(tid),
                "topic": None,
                "n_replies": len(d),
                "n_utterances": len(d),
                "n_coded": len(coded),
                "n_missing": len(d) - len(coded),
                **counts,
                **{k: math.nan for k in miti.GLOBALS},
            }
        )
    return pd.DataFrame(rows).sort_values("variant", kind="stable")  # high before low


def annomi_reference(annomi: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """MITI summary scores of AnnoMI's high- and low-quality sessions from the human annotations,
    pooled and per conversation, with CIs resampling sessions (mi_llm.eval.miti_summary)."""
    from mi_llm.eval import miti_summary

    return miti_summary.group_summary(annomi_dialogues(annomi), "reference", bootstrap, seed)


def annomi_sample(annomi: pd.DataFrame, n: int, seed: int, context_turns: int) -> list[dict]:
    """Units for the coder check: n therapist utterances, stratified by label, each with context."""
    if n <= 0:
        return []
    th = annomi[(annomi["interlocutor"] == "therapist") & annomi["label"].notna()]
    picked = _stratified(th, "label", n, seed)
    sessions = {tid: d for tid, d in annomi.groupby("transcript_id")}
    units = []
    for row in picked:
        s = sessions[row["transcript_id"]]
        before = s[s["utterance_id"] < row["utterance_id"]].tail(context_turns)
        ctx = [
            {"speaker": "counselor" if w == "therapist" else "client", "text": t}
            for w, t in zip(before["interlocutor"], before["utterance_text"])
        ]
        unit = {
            "model": "annomi",
            "variant": row["mi_quality"],
            "check": "annomi",
            "dialogue_id": f"{row['transcript_id']}:{row['utterance_id']}",
            "cluster": str(row["transcript_id"]),
            "reference": row["label"],
            "topic": None,
            "turns": list(ctx),
            "utterances": [],
        }
        miti.add_reply(unit, row["utterance_text"], ctx)
        units.append(unit)
    return units


def _stratified(df: pd.DataFrame, col: str, n: int, seed: int) -> list:
    """n rows drawn round-robin over the values of col, each value's rows in a seeded order."""
    rng = np.random.default_rng(seed)
    by_label = {lab: d.iloc[rng.permutation(len(d))] for lab, d in df.groupby(col)}
    picked, i = [], 0
    while len(picked) < n and any(i < len(d) for d in by_label.values()):
        picked += [d.iloc[i] for d in by_label.values() if i < len(d)][: n - len(picked)]
        i += 1
    return picked


# ----------------------------------------------------------------------------- gold sentences
# Welivita & Pu's MI gold test split: single sentences of counselors with one of 15 MITI-based
# labels. Their MITI 4.2.1 counterparts; Support, Direct and Warn (MITI 3 codes) have none and
# are not drawn; Self-Disclose and Other are none of the MITI behaviours.
GOLD_CODES = {
    "Closed Question": ("Q",),
    "Open Question": ("Q",),
    "Simple Reflection": ("SR",),
    "Complex Reflection": ("CR",),
    "Give Information": ("GI",),
    "Advise with Permission": ("PERSUADE_PERM",),
    "Affirm": ("AF",),
    "Emphasize Autonomy": ("AUTO",),
    "Advise without Permission": ("PERSUADE",),
    "Confront": ("CONFRONT",),
    "Self-Disclose": (),
    "Other": (),
}


def read_gold(path) -> pd.DataFrame:
    """The gold CSV (Text, Ground truth) with each sentence's MITI label (None: no counterpart)."""
    path = Path(path)
    gold = pd.read_csv(path, keep_default_na=False)
    for col in ("Text", "Ground truth"):
        if col not in gold.columns:
            raise DataError(path, "line 1", col, "missing column")
    for i, g in enumerate(gold["Ground truth"]):
        if g not in GOLD_CODES and g not in ("Support", "Direct", "Warn"):
            raise DataError(path, f"line {i + 2}", "Ground truth", f"unknown label {g!r}")
    gold["label"] = [
        miti.code_label(GOLD_CODES[g]) if g in GOLD_CODES else None for g in gold["Ground truth"]
    ]
    return gold


def gold_sample(gold: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """Units for the gold check: n sentences stratified by MITI label, without context."""
    if n <= 0:
        return []
    units = []
    for row in _stratified(gold[gold["label"].notna()], "label", n, seed):
        unit = {
            "model": "welivita_pu",
            "variant": "gold",
            "check": "gold",
            "topic": None,
            "dialogue_id": f"gold:{row.name}",
            "cluster": f"gold:{row.name}",
            "reference": row["label"],
            "baseline": row.get("Prediction"),
            "turns": [],
            "utterances": [],
        }
        miti.add_reply(unit, row["Text"], [])
        units.append(unit)
    return units


UNMAPPED = "no MITI counterpart"  # a baseline prediction that no MITI code matches: a disagreement


def gold_baseline(units: list[dict]) -> list[dict]:
    """The gold units coded by Welivita & Pu's own classifier (its Prediction column): the
    baseline beside the automatic coder. A prediction without a MITI counterpart (Support, Direct,
    Warn) is a disagreement, labelled UNMAPPED, never dropped."""
    return [
        {
            "reference": u["reference"],
            "cluster": u["cluster"],
            "label": miti.code_label(GOLD_CODES[u.get("baseline")])
            if u.get("baseline") in GOLD_CODES
            else UNMAPPED,
        }
        for u in units
    ]


# ----------------------------------------------------------------------------- coder checks
def unit_label(unit: dict, to_label=coder_label) -> str | None:
    """The comparison label of a coded check unit: its given "label", else the set of codes over
    its utterances (None when any is missing)."""
    if "label" in unit:
        return unit["label"]
    codes = [ut.get("codes") for ut in unit["utterances"]]
    return None if any(c is None for c in codes) else to_label(sum(map(tuple, codes), ()))


def coder_check(
    units: list[dict],
    comparison: str = "auto_vs_annomi",
    to_label=coder_label,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """Agreement of the automatic coder with reference labels on a coded sample.

    Returns the agreement row (accuracy; Cohen's kappa with a 95% bootstrap CI resampling the
    units' clusters: AnnoMI sessions, gold sentences) and the confusion matrix in long form
    (reference, coder, n), where the coder's missing answers are the column 'missing'.
    """
    got = [
        (u["reference"], unit_label(u, to_label), u.get("cluster", i)) for i, u in enumerate(units)
    ]
    pairs = [(a, b, c) for a, b, c in got if b is not None]
    ref, auto = [a for a, _, _ in pairs], [b for _, b, _ in pairs]
    lo = hi = math.nan
    if len(pairs) > 1:
        clusters = pd.factorize(pd.Series([str(c) for _, _, c in pairs]))[0]
        members = [np.flatnonzero(clusters == k) for k in range(clusters.max() + 1)]
        rng = np.random.default_rng(seed)
        kappas = []
        for draw in rng.integers(0, len(members), size=(bootstrap, len(members))):
            idx = np.concatenate([members[k] for k in draw])
            kappas.append(cohen_kappa([ref[i] for i in idx], [auto[i] for i in idx]))
        kappas = np.array(kappas)[~np.isnan(kappas)]  # a draw with one label only: undefined
        if kappas.size:
            lo, hi = (float(q) for q in np.quantile(kappas, [0.025, 0.975]))
    row = {
        "comparison": comparison,
        "n_sampled": len(got),
        "n_coded": len(pairs),
        "n_missing": len(got) - len(pairs),
        "pass_rate": miti._div(len(pairs), len(got)),
        "n_compared": len(pairs),
        "n_clusters": len({str(c) for _, _, c in pairs}),
        "accuracy": float(np.mean([a == b for a, b in zip(ref, auto)])) if pairs else math.nan,
        "kappa": cohen_kappa(ref, auto),
        "kappa_ci_low": lo,
        "kappa_ci_high": hi,
        "labels": " ".join(sorted(set(ref) | set(auto))),
        "n_rated": 0,
    }
    cm = pd.DataFrame(
        [(a, b if b is not None else "missing") for a, b, _ in got], columns=["reference", "coder"]
    )
    cm = cm.value_counts().rename("n").reset_index().sort_values(["reference", "coder"])
    return row, cm.assign(comparison=comparison)[["comparison", "reference", "coder", "n"]]
