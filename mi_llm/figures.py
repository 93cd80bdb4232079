"""Stage 05: every figure and table of the study, drawn from a run's artifacts only.

Each figure has a `*_table(run_dir)` that reads the run's files (runs/<name>/...) into the tidy
table it draws, and a figure function `name(run_dir, table=None) -> Figure`. A missing artifact
raises MissingArtifact naming the file; make() turns that into a printed 'skipped' line, because
stages may be run selectively and a figure is never drawn from anything but the run's own files.
Where the artifact contract leaves columns open, each reader's docstring states what it assumes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import params as params_mod

STAGE = "05_figures"
COL1, COL2 = 3.5, 7.2  # single / double column width of a paper page, inches
CRITERIA = {"comprehensiveness": 2, "professionalism": 3, "authenticity": 3, "safety": 1}  # max
TEXT_METRICS = {"bleu4": "BLEU-4", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougel": "ROUGE-L"}
MITI = {  # canonical name -> (axis label, aliases, (fair, good) thresholds or None)
    "technical": ("Technical global", ("technical",), (3, 4)),
    "relational": ("Relational global", ("relational",), (3.5, 4)),
    "pct_cr": ("% complex reflections", ("pctcr", "percentcr", "crpct", "pctcomplex"), (40, 50)),
    "r_q": ("Reflection : question", ("rq", "rtoq", "reflectiontoquestion", "rqratio"), (1, 2)),
}
CODES = [
    "Giving Information",
    "Persuade",
    "Persuade with Permission",
    "Question",
    "Simple Reflection",
    "Complex Reflection",
    "Affirm",
    "Seeking Collaboration",
    "Emphasizing Autonomy",
    "Confront",
]  # MITI 4.2.1 behaviour codes, in manual order
CORPUS_NAMES = {
    "cpsycound": "CPsyCounD",
    "cpsycoune": "CPsyCounE",
    "smilechat": "SmileChat",
    "psydtcorpus": "PsyDTCorpus",
    "soulchatcorpus": "SoulChatCorpus",
    "annomi": "AnnoMI",
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
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Droid Sans Fallback",
)
_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_cjk_font: str | None = None


class MissingArtifact(FileNotFoundError):
    """An artifact a figure needs is not in the run (its stage has not run); names the file."""


# ----------------------------------------------------------------------------- style
def cjk_font() -> str | None:
    """Name of an installed font that draws Chinese, or None."""
    from matplotlib import font_manager as fm

    names = {f.name for f in fm.fontManager.ttflist}
    if not any(n in names for n in CJK_FONTS):  # fonts installed after matplotlib built its cache
        for f in fm.findSystemFonts():
            if re.search(r"cjk|wqy|droidsansfallback|sourcehan|simhei|msyh", f.lower()):
                fm.fontManager.addfont(f)
        names = {f.name for f in fm.fontManager.ttflist}
    return next((n for n in CJK_FONTS if n in names), None)


def style() -> str | None:
    """Apply the study's one plot style (8 pt at column width, colour-blind); the CJK font."""
    global _cjk_font
    _cjk_font = cjk_font()
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 8,
            "axes.labelsize": 8,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "legend.fontsize": 7,
            "legend.title_fontsize": 7,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "grid.linewidth": 0.5,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
            "ps.fonttype": 42,  # editable text in PDFs
            "font.sans-serif": ([_cjk_font] if _cjk_font else []) + ["DejaVu Sans"],
            "axes.unicode_minus": False,
        }
    )
    return _cjk_font


def label(text) -> str:
    """A data label fit for the current font: Chinese becomes pinyin when no CJK font exists."""
    text = CORPUS_NAMES.get(str(text), str(text))
    if _cjk_font or not _CJK_RE.search(text):
        return text
    from snownlp import SnowNLP

    return _CJK_RE.sub(lambda m: " ".join(SnowNLP(m.group()).pinyin).title(), text)


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


def _canon(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean of `values` (NaN-free), as (low, high)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return np.nan, np.nan
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))  # n_boot x n
    means = v[idx].mean(axis=1)
    return tuple(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


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
            (*k, g.mean(), *bootstrap_ci(g))
            for k, g in out.groupby(ids + ["metric"], sort=False)["value"]
        ]
        out = pd.DataFrame(rows, columns=ids + ["metric", "value", "ci_low", "ci_high"])
    return out.reset_index(drop=True)


def _source(df: pd.DataFrame) -> pd.Series:
    """One display label per row from its id columns, e.g. 'gemma3-270m · finetuned'."""
    ids = [
        c for c in ID_COLS if c in df.columns and c not in ("category", "topic", "symptom", "group")
    ]
    if not ids:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[ids].apply(
        lambda r: " · ".join(label(v) for v in r if pd.notna(v) and v != ""), axis=1
    )


# ----------------------------------------------------------------------------- drawing
def _bars(ax, df, x, hue=None, horizontal=False, colors=None):
    """Grouped bars of df.value by x (and hue) with asymmetric CI whiskers where known.

    colors: {hue value: colour}, or without hue a list of one colour per x value.
    """
    xs = list(dict.fromkeys(df[x]))
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    colors = colors or dict(zip(hues, sns.color_palette("colorblind", max(len(hues), 3))))
    if hue is None and isinstance(colors, list):
        colors = {None: colors}
    w = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sub = (df if h is None else df[df[hue] == h]).drop_duplicates(x).set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * w
        v = sub["value"].to_numpy(float)
        err = None
        if sub["ci_low"].notna().any():
            err = np.clip(
                np.nan_to_num(np.vstack([v - sub["ci_low"], sub["ci_high"] - v])), 0, None
            )
        kw = dict(
            color=colors[h],
            label=None if h is None else label(h),
            error_kw=dict(lw=0.8, capsize=2, ecolor="0.2"),
        )
        if horizontal:
            ax.barh(pos, v, w, xerr=err, **kw)
        else:
            ax.bar(pos, v, w, yerr=err, **kw)
    ticks = ax.set_yticks if horizontal else ax.set_xticks
    ticks(np.arange(len(xs)), [label(s) for s in xs])
    if horizontal and not ax.yaxis_inverted():  # first item on top (shared axes invert once)
        ax.invert_yaxis()


def _grid(n, width=COL2, height=1.9, ncols=None, **kw):
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height * nrows), squeeze=False, layout="constrained", **kw
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# ----------------------------------------------------------------------------- (a) corpus quality
def quality_table(run_dir) -> pd.DataFrame:
    """01's quality.csv in long form (corpus, rank, selected, metric, value, ci_low, ci_high).

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
                lo, hi = bootstrap_ci(scores.loc[scores.corpus == r["corpus"], m])
            rows.append(
                dict(
                    corpus=r["corpus"],
                    rank=r.get("rank", np.nan),
                    selected=bool(r.get("selected", False)),
                    metric=m,
                    value=float(r[m]),
                    ci_low=lo,
                    ci_high=hi,
                )
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


def quality(run_dir, table=None):
    """(a) Rubric score per criterion and total per corpus, 95% CIs, selected corpora in colour."""
    t = quality_table(run_dir) if table is None else table
    pal = sns.color_palette("colorblind")
    metrics = [*CRITERIA, "total"]
    fig, axes = _grid(
        len(metrics), ncols=len(metrics), height=0.3 * t.corpus.nunique() + 0.9, sharey=True
    )
    for ax, m in zip(axes, metrics):
        sub = t[t.metric == m]
        _bars(
            ax,
            sub,
            "corpus",
            horizontal=True,
            colors=[pal[0] if s else "0.7" for s in sub.selected],
        )
        top = CRITERIA.get(m, sum(CRITERIA.values()))
        ax.set_xlim(0, top)
        ax.set_title(f"{m.capitalize()}\n(0–{top})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (pal[0], "0.7")]
    fig.legend(
        handles, ["selected", "not selected"], loc="outside upper center", ncol=2, frameon=False
    )
    return fig


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


def transcription(run_dir, table=None):
    """(b) MI transcription outcome: valid outputs and failures by reason."""
    t = transcription_table(run_dir) if table is None else table
    pal = sns.color_palette("colorblind")
    fig, ax = plt.subplots(layout="constrained", figsize=(COL1, 0.3 * len(t) + 0.8))
    colors = [pal[2] if o == "valid" else pal[3] for o in t.outcome]
    ax.barh(np.arange(len(t)), t["count"], color=colors)
    ax.set_yticks(np.arange(len(t)), t.outcome)
    ax.invert_yaxis()
    for i, c in enumerate(t["count"]):
        ax.annotate(
            str(c), (c, i), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7
        )
    ax.set_xlabel("dialogues")
    ax.set_title(f"MI transcription outcome (n = {t['count'].sum()})")
    return fig


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


def training_loss(run_dir, table=None):
    """(c) LoRA SFT training loss per step, one line per model."""
    t = training_loss_table(run_dir) if table is None else table
    fig, ax = plt.subplots(layout="constrained", figsize=(COL1, 2.3))
    sns.lineplot(data=t, x="step", y="loss", hue="model", marker="o", markersize=3, ax=ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title("Fine-tuning loss")
    return fig


# ----------------------------------------------------------------------------- (d) BLEU / ROUGE
def _variant_order(t):
    known = ["base", "finetuned"]
    return sorted(t.variant.unique(), key=lambda v: (known.index(v) if v in known else 9, v))


def text_metrics_table(run_dir) -> pd.DataFrame:
    """04's metrics.csv, long form (model, variant, metric, value, ci_low, ci_high), ×100 scale.

    Accepts long (metric + mean|value) or wide (bleu4, rouge1, ... with _ci_low/_ci_high) tables,
    or per-reply rows (averaged here with bootstrap CIs); metric names match case- and
    punctuation-insensitively (BLEU-4 = bleu_4 = bleu4).
    """
    f = _file(run_dir, "04_evaluation/metrics.csv")
    t = tidy(_csv(run_dir, "04_evaluation/metrics.csv"), f)
    t["metric"] = t.metric.map(lambda m: TEXT_METRICS.get(_canon(m), m))
    for col in ("model", "variant"):
        if col not in t.columns:
            raise ValueError(f"{f}: column {col!r} missing")
    return t


def text_metrics(run_dir, table=None):
    """(d) BLEU-4 and ROUGE-1/2/L, base vs fine-tuned per model, 95% CIs."""
    t = text_metrics_table(run_dir) if table is None else table
    t = t[t.metric.isin(TEXT_METRICS.values())]
    if t.empty:
        raise ValueError(f"metrics.csv has none of {list(TEXT_METRICS.values())}")
    order = _variant_order(t)
    metrics = [m for m in TEXT_METRICS.values() if m in set(t.metric)]
    fig, axes = _grid(len(metrics), height=2.0)
    for ax, m in zip(axes, metrics):
        sub = t[t.metric == m].assign(_v=lambda d: d.variant.map(order.index)).sort_values("_v")
        _bars(ax, sub, "model", hue="variant")
        ax.set_title(m)
        ax.tick_params(axis="x", rotation=20)
    axes[0].set_ylabel("score (×100)")
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside upper center",
        frameon=False,
        ncol=len(order),
    )
    return fig


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


def therapy_metrics(run_dir, table=None):
    """(e) Therapy response metrics per category: a panel per metric, bars per model · variant."""
    t = therapy_metrics_table(run_dir) if table is None else table
    t = t.assign(who=_source(t.drop(columns="category")), category=t.category.fillna("all"))
    metrics = list(dict.fromkeys(t.metric))
    fig, axes = _grid(len(metrics), ncols=min(len(metrics), 3), height=2.1)
    for ax, m in zip(axes, metrics):
        _bars(ax, t[t.metric == m], "category", hue="who")
        ax.set_title(THERAPY.get(m, label(m.replace("_", " "))))
        ax.tick_params(axis="x", rotation=30)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside upper center",
        frameon=False,
        ncol=min(t.who.nunique(), 4),
    )
    return fig


# ----------------------------------------------------------------------------- (f) MITI summary
def miti_summary_table(run_dir) -> pd.DataFrame:
    """04's miti_summary.csv, long form (source, metric, value, ci_low, ci_high, reference).

    Assumed (mi_llm.miti's SUMMARY_COLUMNS): one row per coded source (model, variant; group
    "reference" or a name containing AnnoMI marks real MI) with technical, relational, pct_cr (in
    percent), r_q, mi_adherent, mi_non_adherent, wide or long; other columns are not drawn.
    """
    f = _file(run_dir, "04_evaluation/miti_summary.csv")
    t = tidy(_csv(run_dir, "04_evaluation/miti_summary.csv"), f)
    alias = {a: k for k, (_, aliases, _) in MITI.items() for a in (k.replace("_", ""), *aliases)}
    t["metric"] = t.metric.map(lambda m: alias.get(_canon(m), m))
    t = t[t.metric.isin([*MITI, "mi_adherent", "mi_non_adherent"])].copy()
    t["source"] = _source(t)
    t["reference"] = t.source.str.lower().str.contains("annomi")
    if "group" in t.columns:
        t["reference"] |= t["group"].eq("reference")
    return t[["source", "reference", "metric", "value", "ci_low", "ci_high"]].reset_index(drop=True)


def miti_summary(run_dir, table=None):
    """(f) MITI 4.2.1 summary scores vs the fair/good thresholds, beside AnnoMI high/low."""
    t = miti_summary_table(run_dir) if table is None else table
    metrics = [m for m in MITI if m in set(t.metric)]
    if not metrics:
        raise ValueError(f"miti_summary.csv has none of {list(MITI)}")
    pal = sns.color_palette("colorblind")
    sources = list(dict.fromkeys(t.source))
    ref = dict(zip(t.source, t.reference))
    model_colors = iter(pal[:2] + pal[4:])
    colors = {
        s: ("0.35" if "high" in s.lower() else "0.7") if ref[s] else next(model_colors)
        for s in sources
    }
    fig, axes = _grid(len(metrics), height=0.25 * len(sources) + 1.0, sharey=True)
    for ax, m in zip(axes, metrics):
        _bars(
            ax,
            t[t.metric == m],
            "source",
            horizontal=True,
            colors=[colors[s] for s in t[t.metric == m].source],
        )
        name, _, (fair, good) = MITI[m]
        ax.axvline(fair, color=pal[3], ls="--", lw=1, label="fair")
        ax.axvline(good, color=pal[2], ls="-", lw=1, label="good")
        ax.set_title(name)
    fig.legend(
        *axes[-1].get_legend_handles_labels(), loc="outside upper center", ncol=2, frameon=False
    )
    return fig


# ----------------------------------------------------------------------------- (g) behaviour codes
CODE_KEYS = ("utterances", "code", "codes", "behaviour", "behavior", "label", "miti_code")


def miti_codes_table(run_dir) -> pd.DataFrame:
    """Share of each MITI behaviour code per source (source, code, count, share, reference).

    Assumed: one record per coded unit with its "utterances": [{"code": ...}] (mi_llm.miti), or per
    utterance with code|codes|behaviour|behavior|label|miti_code (a string or list); short codes
    (Q, SR, CR, ...) are named as in mi_llm.miti.CODES, NONE counts as "no behaviour", a null code
    (not coded) is left out; the source from the model/variant/source/mi_quality keys.
    """
    from .miti import CODES as SHORT  # e.g. "CR" -> "Complex Reflection"

    names = {**SHORT, "NONE": "no behaviour"}
    f = _file(run_dir, "04_evaluation/miti_codes.jsonl")
    rows = []
    for i, rec in enumerate(_jsonl(f)):
        key = next((k for k in CODE_KEYS if k in rec), None)
        if key is None:
            raise ValueError(f"{f}: record {i}: no code under any of {CODE_KEYS}")
        codes = rec[key] if isinstance(rec[key], list) else [rec[key]]
        src = {k: rec[k] for k in ID_COLS if k in rec and not isinstance(rec[k], (dict, list))}
        codes = [c.get("code") if isinstance(c, dict) else c for c in codes]
        rows += [{**src, "code": names.get(c, c)} for c in codes if c is not None]
    if not rows:
        raise MissingArtifact(f"{f} has no coded utterances")
    df = pd.DataFrame(rows).dropna(subset=["code"])
    df["source"] = _source(df)
    t = df.groupby(["source", "code"], sort=False).size().rename("count").reset_index()
    t["share"] = t["count"] / t.groupby("source")["count"].transform("sum")
    t["reference"] = t.source.str.lower().str.contains("annomi")  # real MI: drawn last
    return t.sort_values("reference", kind="stable").reset_index(drop=True)


def miti_codes(run_dir, table=None):
    """(g) Distribution of MITI behaviour codes per source (share of coded utterances, %)."""
    t = miti_codes_table(run_dir) if table is None else table
    codes = [c for c in CODES if c in set(t.code)] + sorted(set(t.code) - set(CODES))
    share = (
        t.pivot_table(index="source", columns="code", values="share", sort=False)
        .reindex(columns=codes)
        .fillna(0)
        * 100
    )
    fig, ax = plt.subplots(layout="constrained", figsize=(COL2, 0.35 * len(share) + 1.6))
    sns.heatmap(
        share,
        annot=True,
        fmt=".0f",
        cmap="mako_r",
        vmin=0,
        cbar_kws={"label": "% of codes"},
        linewidths=0.5,
        ax=ax,
        annot_kws={"fontsize": 7},
    )
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_yticklabels([label(s) for s in share.index], rotation=0)
    ax.set_xticklabels(codes, rotation=30, ha="right")
    ax.set_title("MITI behaviour codes")
    return fig


# ----------------------------------------------------------------------------- (h) forecaster
def forecaster_table(run_dir) -> pd.DataFrame:
    """04's forecaster.csv (issue 8), long form (method, metric, value, ci_low, ci_high).

    Assumed: one row per predictor (the forecaster and its baselines) under model|method, with
    macro_f1 and per-class f1_<class> columns (wide) or metric + value (long), CIs optional.
    """
    f = _file(run_dir, "04_evaluation/forecaster.csv")
    t = tidy(_csv(run_dir, "04_evaluation/forecaster.csv"), f)
    who = next((c for c in ("method", "model", "source") if c in t.columns), None)
    if who is None:
        raise ValueError(f"{f}: no predictor column (method|model|source)")
    return t.rename(columns={who: "method"})[["method", "metric", "value", "ci_low", "ci_high"]]


def forecaster(run_dir, table=None):
    """(h) The MI forecaster's macro-F1 (and per-class F1) against its baselines, 95% CIs."""
    t = forecaster_table(run_dir) if table is None else table
    macro = t[t.metric.map(_canon) == "macrof1"]
    per_class = t[t.metric.str.lower().str.startswith("f1")]
    fig, axes = _grid(
        1 + (not per_class.empty),
        width=COL2 if len(per_class) else COL1,
        height=2.3,
        ncols=2 if len(per_class) else 1,
    )
    _bars(axes[0], macro if len(macro) else t, "method")
    axes[0].set_title("macro-F1" if len(macro) else "scores")
    axes[0].tick_params(axis="x", rotation=20)
    if len(per_class):
        per_class = per_class.assign(metric=per_class.metric.str.replace(r"^f1_?", "", regex=True))
        _bars(axes[1], per_class, "metric", hue="method")
        axes[1].set_title("F1 per behaviour")
        axes[1].tick_params(axis="x", rotation=30)
        axes[1].legend(frameon=False)
    return fig


# ----------------------------------------------------------------------------- making and saving
FIGURES = {  # file stem -> (table, figure), in the paper's order
    "corpus_quality": (quality_table, quality),
    "transcription": (transcription_table, transcription),
    "training_loss": (training_loss_table, training_loss),
    "text_metrics": (text_metrics_table, text_metrics),
    "therapy_metrics": (therapy_metrics_table, therapy_metrics),
    "miti_summary": (miti_summary_table, miti_summary),
    "miti_codes": (miti_codes_table, miti_codes),
    "forecaster": (forecaster_table, forecaster),
}


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


def stage_dir(run_dir) -> Path:
    """runs/<name>/05_figures/: the run's own copy of every figure and table."""
    return Path(run_dir) / STAGE


def make(name: str, run_dir, fp: params_mod.FiguresParams):
    """Draw one figure, save it (fp.formats, fp.dpi) and its table (CSV, Markdown); None if skipped.

    Written to runs/<name>/05_figures/ and copied to fp.out_dir (the paper's figures/ folder).
    """
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; known: {list(FIGURES)}")
    table_fn, figure_fn = FIGURES[name]
    own = stage_dir(run_dir)
    try:
        table = table_fn(run_dir)
    except MissingArtifact as e:
        for old in [*own.glob(f"{name}.*"), *own.glob(f"tables/{name}.*")]:
            old.unlink()  # a figure of an earlier run of this config must not pass for this one's
        print(f"[figures] skipped {name}: {e}")
        return None
    fig = figure_fn(run_dir, table)
    out = params_mod.path(fp.out_dir)
    (own / "tables").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in fp.formats:
        fig.savefig(own / f"{name}.{fmt}", dpi=fp.dpi, metadata=_metadata(fmt))
        files.append(own / f"{name}.{fmt}")
    table.to_csv(own / "tables" / f"{name}.csv", index=False)
    (own / "tables" / f"{name}.md").write_text(to_markdown(table), encoding="utf-8")
    files += [own / "tables" / f"{name}.csv", own / "tables" / f"{name}.md"]
    for f in files:
        shutil.copy2(f, out / f.relative_to(own))
    return fig


def _metadata(fmt):
    # no creation dates: the same artifacts give byte-identical PNG/PDF files on a re-run
    return {"png": {"Software": None}, "pdf": {"CreationDate": None}}.get(fmt, {})


def make_all(run_dir, fp: params_mod.FiguresParams) -> pd.DataFrame:
    """Make every figure (closing each); the saved() overview."""
    for name in FIGURES:
        fig = make(name, run_dir, fp)
        if fig is not None:
            plt.close(fig)
    return saved(run_dir)


def saved(run_dir) -> pd.DataFrame:
    """One row per figure: whether this run made it and its files in runs/<name>/05_figures/."""
    own = stage_dir(run_dir)
    rows = [
        dict(
            figure=n,
            made=(own / "tables" / f"{n}.csv").exists(),
            files=", ".join(
                sorted(f.name for f in [*own.glob(f"{n}.*"), *own.glob(f"tables/{n}.*")])
            ),
        )
        for n in FIGURES
    ]
    return pd.DataFrame(rows)


def table(name: str, run_dir) -> pd.DataFrame | None:
    """The saved table of one figure of this run (None when the figure was skipped)."""
    f = stage_dir(run_dir) / "tables" / f"{name}.csv"
    return pd.read_csv(f) if f.exists() else None


def inputs(run_dir) -> list[Path]:
    """The artifact files the figures read that exist in this run (for provenance)."""
    rels = [
        "01_corpus_quality/quality.csv",
        "01_corpus_quality/judgements.jsonl",
        "02_mi_transcription/report.json",
        "04_evaluation/metrics.csv",
        "04_evaluation/therapy_metrics.csv",
        "04_evaluation/miti_summary.csv",
        "04_evaluation/miti_codes.jsonl",
        "04_evaluation/forecaster.csv",
    ]
    found = [Path(run_dir) / r for r in rels if (Path(run_dir) / r).exists()]
    return found + sorted((Path(run_dir) / "03_sft").glob("*/train_log.csv"))
