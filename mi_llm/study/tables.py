"""Stage 05's artifact readers: each figure's tidy table, read from a run's files only.

Each `*_table(run_dir)` reads the run's files (runs/<name>/...) into the tidy table its figure
(mi_llm.study.figures) draws; a missing artifact raises MissingArtifact naming the file, which
figures.make() turns into a printed 'skipped' line. Each reader reads the one schema its producer
writes, by the column names (or JSON keys) the producer module defines (quality.QUALITY_COLUMNS,
transcribe.REPORT_VALID, metrics.score_columns, therapy.THERAPY_COLUMNS,
forecast_eval.FORECASTER_COLUMNS, miti.SUMMARY_COLUMNS); a missing column raises ValueError naming the
file and the column.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm import stages
from mi_llm.data import quality, transcribe
from mi_llm.data.schema import DataError
from mi_llm.eval import forecast_eval, metrics, therapy
from mi_llm.eval.miti import CODES, NONE, SCORES, THRESHOLDS
from mi_llm.eval.miti_check import ANNOMI_CODES
from mi_llm.stats import bootstrap_ci

CRITERIA = quality.CRITERIA  # rubric criterion -> max points
TEXT_METRICS = {"bleu4": "BLEU-4", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
MITI_LABELS = {  # miti_summary.csv score column -> axis label, in the figure's order
    "technical": "Technical global",
    "relational": "Relational global",
    "pct_cr": "% complex reflections",
    "r_q": "Reflection : question",
    "pct_mi_adherent": "% MI-adherent",
}
# score column -> (axis label, (fair, good) of miti.THRESHOLDS or None: %MI-adherent has none)
MITI = {k: (name, THRESHOLDS.get(k)) for k, name in MITI_LABELS.items()}
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
THERAPY = {  # therapy_metrics.csv column of therapy.COMPARISON -> panel title (each a rate)
    "mean_abs_length_diff": "|Δ length| to counselor (chars per reply)",
    "mean_abs_sentence_diff": "|Δ sentences| to counselor (per reply)",
    "sentiment_distance": "sentiment distance (per reply)",
    "question_replies": "share of replies with a question",
    "question_marks": "question marks per reply",
    "name_mismatch": "name-use mismatches per named round",
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


def _require(df: pd.DataFrame, f, cols) -> None:
    """Raise ValueError naming the file and the first column of `cols` that df lacks."""
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"{f}: column {c!r} missing; columns: {list(df.columns)}")


def _long(df: pd.DataFrame, ids: list[str], names, with_ci=()) -> pd.DataFrame:
    """Long form (ids..., metric, value, ci_low, ci_high) of a table with one column per metric
    of `names`, metric by metric; those of `with_ci` have `<metric>_ci_low/_ci_high` columns."""
    out = pd.concat(
        [
            df[ids].assign(
                metric=m,
                value=df[m].astype(float),
                ci_low=df[f"{m}_ci_low"] if m in with_ci else np.nan,
                ci_high=df[f"{m}_ci_high"] if m in with_ci else np.nan,
            )
            for m in names
        ]
    )
    return out.reset_index(drop=True)


def _flag_small(t: pd.DataFrame) -> pd.DataFrame:
    """t with too_small: its CI resamples fewer than metrics.MIN_DIALOGUES dialogues
    (metrics.TOO_SMALL: a figure says so beside the bar)."""
    return t.assign(too_small=t["n_dialogues"].astype(float) < metrics.MIN_DIALOGUES)


def source_labels(df: pd.DataFrame) -> pd.Series:
    """One source id per row from its id columns, e.g. 'gemma3-270m · finetuned': the ids as the
    artifacts hold them, never fitted to a font (mi_llm.study.figures.label does that when drawing)."""
    ids = [
        c for c in ID_COLS if c in df.columns and c not in ("category", "topic", "symptom", "group")
    ]
    if not ids:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[ids].apply(lambda r: " · ".join(str(v) for v in r if pd.notna(v) and v != ""), axis=1)


# ----------------------------------------------------------------------------- (a) corpus quality
def quality_table(run_dir) -> pd.DataFrame:
    """01's quality.csv (quality.QUALITY_COLUMNS and FIXTURE_COLUMN) in long form (corpus, rank,
    selected, fixture, judged, metric, value, ci_low, ci_high); judged is False for a corpus
    without one judged dialogue (n_judged 0, total NaN), drawn as "not judged", never as 0.

    The total's CI is quality.csv's total_ci_low/high; each criterion's is bootstrapped from the
    "scores" of judgements.jsonl's records (quality.JUDGEMENT_FIELDS), NaN without that file.
    """
    f = _file(run_dir, stages.QUALITY)
    q = _csv(run_dir, stages.QUALITY)
    _require(q, f, [*quality.QUALITY_COLUMNS, quality.FIXTURE_COLUMN])
    scores = _judgement_scores(Path(run_dir) / stages.JUDGEMENTS)
    rows = []
    for _, r in q.iterrows():
        for m in [*CRITERIA, "total"]:
            if m == "total":
                lo, hi = r["total_ci_low"], r["total_ci_high"]
            elif scores is not None:
                lo, hi = bootstrap_ci(scores.loc[scores.corpus == r["corpus"], m].dropna())
            else:
                lo = hi = np.nan
            rows.append(
                {
                    "corpus": r["corpus"],
                    "rank": r["rank"],
                    "selected": bool(r["selected"]),
                    "fixture": str(r[quality.FIXTURE_COLUMN]).lower() == "true",
                    "judged": bool(r.get("n_judged", 1) > 0 and pd.notna(r["total"])),
                    "metric": m,
                    "value": float(r[m]),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return pd.DataFrame(rows).sort_values(["rank", "corpus"], kind="stable").reset_index(drop=True)


def _judgement_scores(f: Path) -> pd.DataFrame | None:
    """The rubric scores of judgements.jsonl (corpus, criteria...; NaN for a failed judgement)."""
    if not f.exists():
        return None
    rows = []
    for i, rec in enumerate(_jsonl(f)):
        for k in quality.JUDGEMENT_FIELDS:
            if k not in rec:
                raise DataError(f, i, k, "missing")
        s = rec["scores"]
        if s is not None and not isinstance(s, dict):
            raise DataError(f, i, "scores", f"not an object: {s!r}")
        rows.append({"corpus": rec["corpus"], **{c: (s or {}).get(c) for c in CRITERIA}})
    df = pd.DataFrame(rows)
    return df.apply(pd.to_numeric, errors="coerce").assign(corpus=df.corpus) if len(df) else None


# ----------------------------------------------------------------------------- (b) transcription
def transcription_table(run_dir) -> pd.DataFrame:
    """Outcome counts (outcome, count) from 02's report.json: the valid dialogues (key
    transcribe.REPORT_VALID) and the failed ones by reason (transcribe.REPORT_FAILED: {reason:
    count})."""
    f = _file(run_dir, stages.TRANSCRIPTION_REPORT)
    rep = json.loads(f.read_text(encoding="utf-8"))
    for k in (transcribe.REPORT_VALID, transcribe.REPORT_FAILED):
        if k not in rep:
            raise DataError(f, "(file)", k, f"missing; keys: {sorted(rep)}")
    valid, failed = rep[transcribe.REPORT_VALID], rep[transcribe.REPORT_FAILED]
    if not isinstance(valid, int) or isinstance(valid, bool):
        raise DataError(f, "(file)", transcribe.REPORT_VALID, f"not a count: {valid!r}")
    if not isinstance(failed, dict):
        raise DataError(f, "(file)", transcribe.REPORT_FAILED, "not {reason: count}")
    rows = [("valid", int(valid))] + [(f"failed: {k}", int(v)) for k, v in failed.items()]
    return pd.DataFrame(rows, columns=["outcome", "count"])


# ----------------------------------------------------------------------------- (c) training loss
def training_loss_table(run_dir) -> pd.DataFrame:
    """03's train_log.csv of every model (model, step, loss, learning_rate, tokens_per_s)."""
    logs = sorted(Path(run_dir).glob(stages.TRAIN_LOG.format(model="*")))
    if not logs:
        raise MissingArtifact(
            f"{Path(run_dir) / stages.TRAIN_LOG.format(model='<model>')} is missing "
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
    """04's metrics.csv (metrics.score_columns), long form (model, variant, n_dialogues, metric,
    value, ci_low, ci_high, too_small), ×100 scale.

    The metrics are metrics.METRICS, named as TEXT_METRICS says, and, where the run scored them
    (`evaluation.content_metrics`), metrics.CONTENT: "BLEU-4 (content only)", ...
    """
    f = _file(run_dir, stages.METRICS)
    raw = _csv(run_dir, stages.METRICS)
    content = any(c in raw.columns for c in metrics.CONTENT)
    names = [*metrics.METRICS, *(metrics.CONTENT if content else [])]
    _require(raw, f, metrics.score_columns(names))
    labels = {
        **TEXT_METRICS,
        **{f"{k}_content": f"{v} (content only)" for k, v in TEXT_METRICS.items()},
    }
    t = _long(raw, [*metrics.SCORE_IDS, "n_dialogues"], names, with_ci=names)
    t["metric"] = t.metric.map(labels)
    return _flag_small(t)


# ----------------------------------------------------------------------------- (e) therapy metrics
def therapy_metrics_table(run_dir) -> pd.DataFrame:
    """04's therapy_metrics.csv (therapy.THERAPY_COLUMNS), long form (model, category, variant, n,
    n_dialogues, metric, value, ci_low, ci_high, too_small) of therapy.COMPARISON's rates (per reply, name
    mismatches per named round), each with its 95% CI resampling dialogues.

    variant "reference" is the gold counselor; category "all" pools a model's replies (a rate over
    all of them, not a sum of the categories' bars).
    """
    f = _file(run_dir, stages.THERAPY_METRICS)
    raw = _csv(run_dir, stages.THERAPY_METRICS)
    _require(raw, f, therapy.THERAPY_COLUMNS)
    ids = [*therapy.THERAPY_IDS, "n", "n_dialogues"]
    return _flag_small(_long(raw, ids, therapy.COMPARISON, with_ci=therapy.COMPARISON))


# ----------------------------------------------------------------------------- (f) MITI summary
def miti_summary_table(run_dir) -> pd.DataFrame:
    """04's miti_summary.csv (miti.SUMMARY_COLUMNS), long form (source, reference, definition,
    metric, value, ci_low, ci_high, n_dialogues, n_utterances, n, too_small).

    One row per coded source (group, model, variant; group "reference" is AnnoMI's real MI) and
    definition (pooled | per_conversation, miti.DEFINITIONS); the scores are miti.SCORES (pct_cr in
    percent; the figure draws MITI_LABELS's) with the 95% CI resampling dialogues; n is the
    source's coded utterances, and the source id says its n's: "gemma3-270m · finetuned (2
    dialogues, 8 utterances)".
    """
    f = _file(run_dir, stages.MITI_SUMMARY)
    raw = _csv(run_dir, stages.MITI_SUMMARY)
    cis = [f"{m}_{e}" for m in SCORES for e in ("ci_low", "ci_high")]
    _require(
        raw, f, ["group", "model", "variant", "definition", "n_coded", "n_dialogues", *SCORES, *cis]
    )
    t = raw[["model", "variant", "group", "definition"]].copy()
    t["reference"] = raw["group"].eq("reference")
    t["n_dialogues"], t["n_utterances"], t["n"] = (
        raw["n_dialogues"],
        raw["n_utterances"],
        raw["n_coded"],
    )
    t["source"] = [
        f"{s} ({int(d)} dialogues, {int(k)} utterances)"
        for s, d, k in zip(source_labels(raw), t.n_dialogues, t.n_utterances)
    ]
    t = pd.concat(
        [
            t.assign(
                metric=m,
                value=raw[m].astype(float),
                ci_low=raw[f"{m}_ci_low"].astype(float),
                ci_high=raw[f"{m}_ci_high"].astype(float),
            )
            for m in SCORES
        ],
        ignore_index=True,
    )
    cols = ["source", "reference", "definition", "metric", "value", "ci_low", "ci_high"]
    return _flag_small(t[[*cols, "n_dialogues", "n_utterances", "n"]].reset_index(drop=True))


# ----------------------------------------------------------------------------- (g) behaviour codes
def miti_codes_table(run_dir) -> pd.DataFrame:
    """Share of coded utterances given each MITI behaviour per source (source, code, count, n,
    reference, share, definition: pooled over the source's dialogues); share NaN: the source
    does not annotate that code ("n/a").

    Generated sources come from miti_codes.jsonl (mi_llm.eval.miti): one record per coded unit with its
    id fields and "utterances": [{"codes": [...]}], one code per utterance. NONE or an empty list
    counts as "no behaviour", a null code (not coded) is left out. Real MI is AnnoMI's human codes:
    the pooled reference rows of miti_summary.csv (counts of Q, SR, CR, GI over n_coded
    utterances; an AnnoMI utterance can hold a question and a reflection, so its shares can add up
    to more than 1); AnnoMI annotates no other MITI code: those cells are NaN.
    """
    names = {**CODES, NONE: "no behaviour"}
    f = _file(run_dir, stages.MITI_CODES)
    rows = []
    for i, rec in enumerate(_jsonl(f)):
        if "utterances" not in rec:
            raise ValueError(f"{f}: record {i}: field 'utterances' missing")
        if rec.get("check"):  # a coder-check record (miti_check_codes.jsonl's): not drawn
            continue
        src = {k: rec[k] for k in ID_COLS if k in rec and not isinstance(rec[k], (dict, list))}
        for u in rec["utterances"]:
            c = u.get("codes")
            if c is None:
                continue  # not coded
            codes = [x for x in c if x != NONE] or [NONE]
            rows.append({**src, "utt": len(rows), "codes": [names.get(x, x) for x in codes]})
    if not rows:
        raise MissingArtifact(f"{f} has no coded utterances")
    df = pd.DataFrame(rows)
    df["source"] = source_labels(df)
    n = df.groupby("source", sort=False).size().rename("n")
    t = df.explode("codes").groupby(["source", "codes"], sort=False).size().rename("count")
    t = t.reset_index().rename(columns={"codes": "code"}).join(n, on="source")
    t["reference"] = False
    t = pd.concat([t, _annomi_codes(run_dir)], ignore_index=True)
    t["share"] = t["count"] / t["n"]
    t["definition"] = "pooled"  # utterances counted over all of a source's dialogues
    t["source"] = [f"{s} (n={int(k)})" for s, k in zip(t.source, t.n)]
    return t.sort_values("reference", kind="stable").reset_index(drop=True)


def _annomi_codes(run_dir) -> pd.DataFrame:
    """AnnoMI's human code counts (source, code, count, n, reference) from miti_summary.csv."""
    cols = ["source", "code", "count", "n", "reference"]
    try:
        s = _csv(run_dir, stages.MITI_SUMMARY)
    except MissingArtifact:
        return pd.DataFrame(columns=cols)
    _require(s, Path(run_dir) / stages.MITI_SUMMARY, ["group", "n_coded", *ANNOMI_CODES])
    s = s[s["group"].eq("reference") & s["n_coded"].notna()]
    if "definition" in s:
        s = s[s["definition"].eq("pooled")]  # counts are the same in both definitions
    if s.empty:
        return pd.DataFrame(columns=cols)
    s = s.assign(source=source_labels(s) + " (human codes)")
    rows = [
        (r.source, CODES[c], r[c] if c in ANNOMI_CODES else np.nan, r["n_coded"], True)
        for _, r in s.iterrows()
        for c in CODES
    ]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- (h) forecaster
def forecaster_table(run_dir) -> pd.DataFrame:
    """04's forecaster.csv (forecast_eval.FORECASTER_COLUMNS), long form (method, metric, value, ci_low,
    ci_high): one method per predictor (the forecasters and their baselines, the file's `model`),
    the metrics forecast_eval.FORECASTER_METRICS (accuracy without a CI).
    """
    f = _file(run_dir, stages.FORECASTER)
    raw = _csv(run_dir, stages.FORECASTER)
    _require(raw, f, forecast_eval.FORECASTER_COLUMNS)
    names = forecast_eval.FORECASTER_METRICS
    t = _long(
        raw,
        ["model"],
        names,
        with_ci=[m for m in names if f"{m}_ci_low" in forecast_eval.FORECASTER_COLUMNS],
    )
    return t.rename(columns={"model": "method"})[["method", "metric", "value", "ci_low", "ci_high"]]


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
