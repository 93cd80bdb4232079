"""Stage 05's artifact readers: each figure's tidy table, read from a run's files only.

Each `*_table(run_dir)` reads the run's files (runs/<name>/...) into the tidy table its figure
(mi_llm.figures) draws; a missing artifact raises MissingArtifact naming the file, which
figures.make() turns into a printed 'skipped' line. Where the artifact contract leaves columns
open, each reader's docstring states what it assumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import bootstrap_ci
from .quality import CRITERIA

TEXT_METRICS = {"bleu4": "BLEU-4", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougel": "ROUGE-L"}
MITI = {  # canonical name -> (axis label, aliases, (fair, good) thresholds or None)
    "technical": ("Technical global", ("technical",), (3, 4)),
    "relational": ("Relational global", ("relational",), (3.5, 4)),
    "pct_cr": ("% complex reflections", ("pctcr", "percentcr", "crpct", "pctcomplex"), (40, 50)),
    "r_q": ("Reflection : question", ("rq", "rtoq", "reflectiontoquestion", "rqratio"), (1, 2)),
    "pct_mi_adherent": ("% MI-adherent", ("pctmiadherent", "pctmia"), None),  # no MITI threshold
}
ID_COLS = [
    "source",
    "model",
    "variant",
    "group",
    "mi_quality",
    "coder",
    "method",
    "category",
    "topic",
    "symptom",
    "split",
]
NOT_METRICS = {"n", "round", "step", "seed", "rank"}  # and every n_* column: counts, not metrics
THERAPY = {  # therapy_metrics.csv column -> panel title; the therapy pipeline's comparison set
    "mean_abs_length_diff": "|Δ length| to counselor (chars)",
    "mean_abs_sentence_diff": "|Δ sentences| to counselor",
    "sentiment_distance": "sentiment distance",
    "question_replies": "replies with a question",
    "question_marks": "question marks",
    "name_mismatch": "name-use mismatches",
}


class MissingArtifact(FileNotFoundError):
    """An artifact a figure needs is not in the run (its stage has not run); names the file."""


# ----------------------------------------------------------------------------- reading
def _file(run_dir, rel: str) -> Path:
    f = Path(run_dir) / rel
    if not f.exists():
        raise MissingArtifact(f"{f} is missing (stage {rel.split('/')[0]} has not written it)")
    return f


def _csv(run_dir, rel: str) -> pd.DataFrame:
    f = _file(run_dir, rel)
    df = pd.read_csv(f)
    if df.empty:
        raise MissingArtifact(f"{f} has no rows")
    return df


def _jsonl(f: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: line {i + 1}: not JSON ({e})") from None
    return rows


def canon(name) -> str:
    """A name compared case- and punctuation-insensitively (BLEU-4 -> bleu4)."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def tidy(df: pd.DataFrame, file) -> pd.DataFrame:
    """Long form (id columns..., metric, value, ci_low, ci_high) of a long or wide metrics table.

    Long input has a `metric` column and one of mean/value/score (+ optional ci_low, ci_high);
    wide input has one numeric column per metric with optional `<metric>_ci_low/_ci_high`.
    Per-item input (a dialogue_id column, no CIs) is averaged with bootstrap CIs.
    """
    ids = [c for c in df.columns if c in ID_COLS]
    if "metric" in df.columns:
        val = next((c for c in ("mean", "value", "score") if c in df.columns), None)
        if val is None:
            raise ValueError(f"{file}: a `metric` column needs a mean/value/score column beside it")
        out = df[ids + ["metric"]].assign(value=df[val].astype(float))
        for c in ("ci_low", "ci_high"):
            out[c] = df[c].astype(float) if c in df.columns else np.nan
    else:
        skip = (
            set(ids)
            | NOT_METRICS
            | {c for c in df.columns if c.startswith("n_")}
            | {c for c in df.columns if re.search(r"_(ci_low|ci_high|std|se)$", c)}
        )
        metrics = [c for c in df.select_dtypes("number").columns if c not in skip]
        if not metrics:
            raise ValueError(f"{file}: no numeric metric columns found in {list(df.columns)}")
        out = pd.concat(
            [
                df[ids].assign(
                    metric=m,
                    value=df[m].astype(float),
                    ci_low=df.get(f"{m}_ci_low", np.nan),
                    ci_high=df.get(f"{m}_ci_high", np.nan),
                )
                for m in metrics
            ]
        )
    if "dialogue_id" in df.columns and out["ci_low"].isna().all():  # per reply: aggregate here
        rows = [
            (*k, g.mean(), *bootstrap_ci(g.dropna()))
            for k, g in out.groupby(ids + ["metric"], sort=False)["value"]
        ]
        out = pd.DataFrame(rows, columns=ids + ["metric", "value", "ci_low", "ci_high"])
    return out.reset_index(drop=True)


def source_labels(df: pd.DataFrame) -> pd.Series:
    """One display label per row from its id columns, e.g. 'gemma3-270m · finetuned'."""
    from .figures import label  # labels follow the plot font that figures.style() found

    ids = [
        c for c in ID_COLS if c in df.columns and c not in ("category", "topic", "symptom", "group")
    ]
    if not ids:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[ids].apply(
        lambda r: " · ".join(label(v) for v in r if pd.notna(v) and v != ""), axis=1
    )


# ----------------------------------------------------------------------------- (a) corpus quality
def quality_table(run_dir) -> pd.DataFrame:
    """01's quality.csv in long form (corpus, rank, selected, fixture, metric, value, ci_low,
    ci_high); fixture is False where quality.csv has no such column.

    Total CIs come from total_ci_low/high; per-criterion CIs from `<criterion>_ci_low/high` when
    present, else bootstrapped from judgements.jsonl records that hold the criteria at top level or
    under "scores"/"parsed" beside a "corpus" key.
    """
    q = _csv(run_dir, "01_corpus_quality/quality.csv")
    scores = _judgement_scores(Path(run_dir) / "01_corpus_quality/judgements.jsonl")
    rows = []
    for _, r in q.iterrows():
        for m in [*CRITERIA, "total"]:
            lo, hi = r.get(f"{m}_ci_low", np.nan), r.get(f"{m}_ci_high", np.nan)
            if pd.isna(lo) and scores is not None and m in scores:
                lo, hi = bootstrap_ci(scores.loc[scores.corpus == r["corpus"], m].dropna())
            rows.append(
                {
                    "corpus": r["corpus"],
                    "rank": r.get("rank", np.nan),
                    "selected": bool(r.get("selected", False)),
                    "fixture": str(r.get("fixture", False)).lower() == "true",
                    "metric": m,
                    "value": float(r[m]),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return pd.DataFrame(rows).sort_values(["rank", "corpus"], kind="stable").reset_index(drop=True)


def _judgement_scores(f: Path) -> pd.DataFrame | None:
    if not f.exists():
        return None
    rows = []
    for rec in _jsonl(f):
        inner = next((rec[k] for k in ("scores", "parsed") if isinstance(rec.get(k), dict)), rec)
        rows.append({"corpus": rec.get("corpus"), **{c: inner.get(c) for c in CRITERIA}})
    df = pd.DataFrame(rows)
    return df.apply(pd.to_numeric, errors="coerce").assign(corpus=df.corpus) if len(df) else None


# ----------------------------------------------------------------------------- (b) transcription
VALID_KEYS = ("n_valid", "valid", "n_ok", "ok")


FAILED_KEYS = ("failed_by_reason", "failures_by_reason", "failure_reasons", "failures", "failed")


def _find(d, keys):
    """First value under one of `keys` in a nested dict (breadth-first), or None."""
    todo = [d]
    while todo:
        cur = todo.pop(0)
        for k in keys:
            if isinstance(cur, dict) and k in cur:
                return cur[k]
        todo += [v for v in (cur.values() if isinstance(cur, dict) else []) if isinstance(v, dict)]
    return None


def transcription_table(run_dir) -> pd.DataFrame:
    """Outcome counts (outcome, count) from 02's report.json.

    Assumed keys, anywhere in the JSON: the valid count under n_valid|valid|n_ok|ok; the failures
    as {reason: count} (or a list of {"reason": ...} records, or one total count) under
    failed_by_reason|failures_by_reason|failure_reasons|failures|failed.
    """
    f = _file(run_dir, "02_mi_transcription/report.json")
    rep = json.loads(f.read_text(encoding="utf-8"))
    valid, failed = _find(rep, VALID_KEYS), _find(rep, FAILED_KEYS)
    if valid is None or isinstance(valid, (dict, list, str)):
        raise ValueError(f"{f}: no valid count under any of {VALID_KEYS}; keys: {sorted(rep)}")
    rows = [("valid", int(valid))]
    if isinstance(failed, dict):
        rows += [(f"failed: {k}", int(v)) for k, v in failed.items()]
    elif isinstance(failed, list):
        reasons = pd.Series(
            [
                r.get("reason", r.get("error", "unknown")) if isinstance(r, dict) else str(r)
                for r in failed
            ],
            dtype=object,
        )
        rows += [(f"failed: {k}", int(v)) for k, v in reasons.value_counts().items()]
    elif isinstance(failed, (int, float)):
        rows.append(("failed", int(failed)))
    return pd.DataFrame(rows, columns=["outcome", "count"])


# ----------------------------------------------------------------------------- (c) training loss
def training_loss_table(run_dir) -> pd.DataFrame:
    """03's train_log.csv of every model (model, step, loss, learning_rate, tokens_per_s)."""
    logs = sorted((Path(run_dir) / "03_sft").glob("*/train_log.csv"))
    if not logs:
        raise MissingArtifact(
            f"{Path(run_dir) / '03_sft'}/<model>/train_log.csv is missing "
            "(stage 03_sft has not written it)"
        )
    frames = [pd.read_csv(f).assign(model=f.parent.name) for f in logs]
    t = pd.concat(frames, ignore_index=True)
    for col in ("step", "loss"):
        if col not in t.columns:
            raise ValueError(f"{logs[0]}: column {col!r} missing; columns: {list(t.columns)}")
    return t.dropna(subset=["loss"])[["model"] + [c for c in t.columns if c != "model"]]


# ----------------------------------------------------------------------------- (d) BLEU / ROUGE
def text_metrics_table(run_dir) -> pd.DataFrame:
    """04's metrics.csv, long form (model, variant, metric, value, ci_low, ci_high), ×100 scale.

    Accepts long (metric + mean|value) or wide (bleu4, rouge1, ... with _ci_low/_ci_high) tables,
    or per-reply rows (averaged here with bootstrap CIs); metric names match case- and
    punctuation-insensitively (BLEU-4 = bleu_4 = bleu4); the content-only scores of
    `evaluation.content_metrics` (bleu4_content, ...) are named "BLEU-4 (content only)", ...
    """
    f = _file(run_dir, "04_evaluation/metrics.csv")
    t = tidy(_csv(run_dir, "04_evaluation/metrics.csv"), f)
    content = {f"{k}content": f"{v} (content only)" for k, v in TEXT_METRICS.items()}
    t["metric"] = t.metric.map(lambda m: TEXT_METRICS.get(canon(m), content.get(canon(m), m)))
    for col in ("model", "variant"):
        if col not in t.columns:
            raise ValueError(f"{f}: column {col!r} missing")
    return t


# ----------------------------------------------------------------------------- (e) therapy metrics
def therapy_metrics_table(run_dir) -> pd.DataFrame:
    """04's therapy_metrics.csv, long form (model, variant, category, metric, value, ci_*).

    Assumed (mi_llm.therapy): a category column category|topic|symptom, id columns model/variant
    (variant "reference" = the gold counselor), one numeric column per metric (wide) or metric +
    value (long); of mi_llm.therapy's columns only THERAPY's are kept; n/n_* columns are counts.
    """
    f = _file(run_dir, "04_evaluation/therapy_metrics.csv")
    t = tidy(_csv(run_dir, "04_evaluation/therapy_metrics.csv"), f)
    if t.metric.isin(list(THERAPY)).any():  # mi_llm.therapy's columns: keep the comparison set
        t = t[t.metric.isin(list(THERAPY))]
    cat = next((c for c in ("category", "topic", "symptom") if c in t.columns), None)
    if cat is None:
        raise ValueError(f"{f}: no category column (category|topic|symptom)")
    return t.rename(columns={cat: "category"})


# ----------------------------------------------------------------------------- (f) MITI summary
def miti_summary_table(run_dir) -> pd.DataFrame:
    """04's miti_summary.csv, long form (source, metric, value, ci_low, ci_high, reference, n).

    Assumed (mi_llm.miti's SUMMARY_COLUMNS): one row per coded source (model, variant; group
    "reference" or a name containing AnnoMI marks real MI) with technical, relational, pct_cr (in
    percent), r_q, pct_mi_adherent, wide or long; other columns are not drawn. n is the source's
    coded utterances (n_coded) and is part of its label, "gemma3-270m · finetuned (n=8)".
    """
    f = _file(run_dir, "04_evaluation/miti_summary.csv")
    raw = _csv(run_dir, "04_evaluation/miti_summary.csv")
    t = tidy(raw, f)
    alias = {a: k for k, (_, aliases, _) in MITI.items() for a in (k.replace("_", ""), *aliases)}
    t["metric"] = t.metric.map(lambda m: alias.get(canon(m), m))
    t = t[t.metric.isin([*MITI, "mi_adherent", "mi_non_adherent"])].copy()
    t["source"] = source_labels(t)
    t["reference"] = t.source.str.lower().str.contains("annomi")
    if "group" in t.columns:
        t["reference"] |= t["group"].eq("reference")
    t["n"] = np.nan
    if "n_coded" in raw.columns:
        n = dict(zip(source_labels(raw), raw["n_coded"]))
        t["n"] = t.source.map(n)
        t["source"] = [f"{s} (n={int(k)})" if pd.notna(k) else s for s, k in zip(t.source, t.n)]
    cols = ["source", "reference", "metric", "value", "ci_low", "ci_high", "n"]
    return t[cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- (g) behaviour codes
CODE_KEYS = ("utterances", "codes", "code", "behaviour", "behavior", "label", "miti_code")


def miti_codes_table(run_dir) -> pd.DataFrame:
    """Share of utterances holding each MITI behaviour per source (source, code, count, n, share,
    reference).

    Generated sources come from miti_codes.jsonl: one record per coded unit with its
    "utterances": [{"codes": [...]}] (mi_llm.miti; an utterance can hold two behaviours, so a
    source's shares can add up to more than 1), or per utterance with codes|code|behaviour|
    behavior|label|miti_code (a string or list). NONE or an empty list counts as "no behaviour", a
    null code (not coded) is left out, coder-check records ("check") are not drawn. Real MI is
    AnnoMI's human codes: the reference rows of miti_summary.csv (counts of Q, SR, CR, GI over
    n_coded utterances; AnnoMI annotates no other MITI code), when that file is there.
    """
    from .miti import CODES as SHORT  # e.g. "CR" -> "Complex Reflection"
    from .miti import NONE

    names = {**SHORT, NONE: "no behaviour"}
    f = _file(run_dir, "04_evaluation/miti_codes.jsonl")
    rows = []
    for i, rec in enumerate(_jsonl(f)):
        key = next((k for k in CODE_KEYS if k in rec), None)
        if key is None:
            raise ValueError(f"{f}: record {i}: no code under any of {CODE_KEYS}")
        if rec.get("check"):
            continue
        src = {k: rec[k] for k in ID_COLS if k in rec and not isinstance(rec[k], (dict, list))}
        utts = rec[key] if key == "utterances" else [rec[key]]
        for u in utts:
            c = u.get("codes", u.get("code")) if isinstance(u, dict) else u
            if c is None:
                continue  # not coded
            codes = [x for x in (c if isinstance(c, list) else [c]) if x != NONE] or [NONE]
            rows.append({**src, "utt": len(rows), "codes": [names.get(x, x) for x in codes]})
    if not rows:
        raise MissingArtifact(f"{f} has no coded utterances")
    df = pd.DataFrame(rows)
    df["source"] = source_labels(df)
    n = df.groupby("source", sort=False).size().rename("n")
    t = df.explode("codes").groupby(["source", "codes"], sort=False).size().rename("count")
    t = t.reset_index().rename(columns={"codes": "code"}).join(n, on="source")
    t["reference"] = False
    t = pd.concat([t, _annomi_codes(run_dir, SHORT)], ignore_index=True)
    t["share"] = t["count"] / t["n"]
    t["source"] = [f"{s} (n={int(k)})" for s, k in zip(t.source, t.n)]
    return t.sort_values("reference", kind="stable").reset_index(drop=True)


def _annomi_codes(run_dir, names: dict) -> pd.DataFrame:
    """AnnoMI's human code counts (source, code, count, n, reference) from miti_summary.csv."""
    cols = ["source", "code", "count", "n", "reference"]
    try:
        s = _csv(run_dir, "04_evaluation/miti_summary.csv")
    except MissingArtifact:
        return pd.DataFrame(columns=cols)
    is_ref = s["group"].eq("reference") if "group" in s.columns else s["model"].eq("annomi")
    s = s[is_ref & s.get("n_coded", pd.Series(np.nan, index=s.index)).notna()]
    if s.empty:
        return pd.DataFrame(columns=cols)
    s = s.assign(source=source_labels(s) + " (human codes)")
    rows = [
        (r.source, names[c], r[c], r["n_coded"], True)
        for _, r in s.iterrows()
        for c in names
        if c in s.columns and pd.notna(r[c])
    ]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- (h) forecaster
def forecaster_table(run_dir) -> pd.DataFrame:
    """04's forecaster.csv, long form (method, metric, value, ci_low, ci_high).

    Assumed: one row per predictor (the forecaster and its baselines) under model|method, with
    macro_f1 and per-class f1_<class> columns (wide) or metric + value (long), CIs optional.
    """
    f = _file(run_dir, "04_evaluation/forecaster.csv")
    t = tidy(_csv(run_dir, "04_evaluation/forecaster.csv"), f)
    who = next((c for c in ("method", "model", "source") if c in t.columns), None)
    if who is None:
        raise ValueError(f"{f}: no predictor column (method|model|source)")
    return t.rename(columns={who: "method"})[["method", "metric", "value", "ci_low", "ci_high"]]


# ----------------------------------------------------------------------------- Markdown
def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (floats rounded to `digits`)."""

    def cell(v):
        return (
            ""
            if pd.isna(v)
            else f"{v:.{digits}f}"
            if isinstance(v, float)
            else str(v).replace("|", "\\|")
        )

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
