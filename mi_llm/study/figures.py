"""Stage 05: every figure of the study, drawn from a run's artifacts only.

Each figure has a table reader in mi_llm.study.tables (`*_table(run_dir)`: the run's files into the tidy
table it draws) and a figure function here, `name(run_dir, table=None) -> Figure`. A missing
artifact raises MissingArtifact naming the file; make() turns that into a printed 'skipped' line,
because stages may be run selectively and a figure is never drawn from anything but the run's own
files. FIGURES pairs them in the paper's order; make() saves both.
"""

from __future__ import annotations

import itertools
import re
import shutil
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mi_llm import params as params_mod
from mi_llm import stages
from mi_llm.data import quality_ties
from mi_llm.data.schema import CJK_CHARS
from mi_llm.eval.miti import CODES as MITI_CODES
from mi_llm.study import figure_notes as notes
from mi_llm.study import smoke
from mi_llm.study.tables import (  # the readers stay importable from here (figures.quality_table, ...)
    CRITERIA,
    MITI,
    TEXT_METRICS,
    THERAPY,
    MissingArtifact,
    bootstrap_ci,  # noqa: F401
    forecaster_table,
    miti_codes_table,
    miti_summary_table,
    quality_table,
    source_labels,
    text_metrics_table,
    therapy_metrics_table,
    to_markdown,
    training_loss_table,
    transcription_table,
)

STAGE = "05_figures"
COL1, COL2 = 3.5, 7.2  # single / double column width of a paper page, inches
CODES = list(MITI_CODES.values())  # MITI 4.2.1 behaviour names, in manual order (miti.CODES)
CORPUS_NAMES = {
    "cpsycound": "CPsyCounD",
    "cpsycoune": "CPsyCounE",
    "smilechat": "SmileChat",
    "psydtcorpus": "PsyDTCorpus",
    "soulchatcorpus": "SoulChatCorpus",
    "annomi": "AnnoMI",
}
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Droid Sans Fallback",
)  # fmt: skip
_CJK_RE = re.compile(f"[{CJK_CHARS}]+")
_cjk_font: str | None = None


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
    """A data label fit for the current font: Chinese becomes pinyin when no CJK font exists.

    Each ' · ' part of a source id (tables.source_labels) is named on its own (annomi -> AnnoMI).
    """
    text = " · ".join(CORPUS_NAMES.get(part, part) for part in str(text).split(" · "))
    if _cjk_font or not _CJK_RE.search(text):
        return text
    from snownlp import SnowNLP

    return _CJK_RE.sub(lambda m: " ".join(SnowNLP(m.group()).pinyin).title(), text)


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
        kw = {
            "color": colors[h],
            "label": None if h is None else label(h),
            "error_kw": {"lw": 0.8, "capsize": 2, "ecolor": "0.2"},
        }
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
def quality(run_dir, table=None):
    """(a) Rubric score per criterion and total per corpus, 95% CIs, selected corpora in colour,
    fixtures (written for this project, not the real corpus) hatched, unjudged ones "not judged"."""
    t = quality_table(run_dir) if table is None else table
    fixtures = set(t.loc[t["fixture"], "corpus"]) if "fixture" in t else set()
    unjudged = set(t.loc[~t["judged"], "corpus"]) if "judged" in t else set()
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
        for i, (bar, corpus) in enumerate(zip(ax.patches, dict.fromkeys(sub.corpus))):
            if corpus in fixtures:  # the bars, in x order
                bar.set_hatch("////")
                bar.set_edgecolor("white")
            if corpus in unjudged:  # no judged dialogue: no score, not a zero bar
                ax.text(0.02, i, "not judged", transform=ax.get_yaxis_transform(), va="center")
        top = CRITERIA.get(m, sum(CRITERIA.values()))
        ax.set_xlim(0, top)
        ax.set_title(f"{m.capitalize()}\n(0–{top})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (pal[0], "0.7")]
    names = ["selected", "not selected"]
    if fixtures:
        handles.append(
            plt.Rectangle((0, 0), 1, 1, facecolor="0.7", edgecolor="white", hatch="////")
        )
        names.append("fixture (not the real corpus)")
    ties = quality_ties.tie_note(t[t.metric == "total"].rename(columns={"value": "total"}))
    fig.legend(handles, names, loc="outside upper center", ncol=len(names), frameon=False)
    if ties:  # equal totals: the selection among them is the tie-break's, not a better score
        fig.supxlabel(textwrap.fill(ties, 110), fontsize=7)
    return fig


# ----------------------------------------------------------------------------- (b) transcription
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
    known = ["base", "finetuned", "conditioned"]
    return sorted(t.variant.unique(), key=lambda v: (known.index(v) if v in known else 9, v))


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
        notes.empty(ax, sub.value) or notes.too_small(ax, sub)
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
def therapy_metrics(run_dir, table=None):
    """(e) Therapy response metrics per category, as rates per reply (name mismatches per named
    round) with 95% CIs resampling dialogues: a panel per metric, bars per model · variant."""
    t = therapy_metrics_table(run_dir) if table is None else table
    t = t.assign(who=source_labels(t.drop(columns="category")), category=t.category.fillna("all"))
    metrics = list(dict.fromkeys(t.metric))
    fig, axes = _grid(len(metrics), ncols=min(len(metrics), 3), height=2.1)
    for ax, m in zip(axes, metrics):
        _bars(ax, t[t.metric == m], "category", hue="who")
        notes.empty(ax, t[t.metric == m].value, m) or notes.too_small(ax, t[t.metric == m])
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
def miti_summary(run_dir, table=None, definition="pooled"):
    """(f) MITI 4.2.1 summary scores in one definition (pooled, or per_conversation) with 95% CIs
    resampling dialogues, vs the fair/good thresholds, beside AnnoMI high/low; each source with
    its n dialogues and utterances."""
    t = miti_summary_table(run_dir) if table is None else table
    t = t[t.definition == definition] if "definition" in t else t
    metrics = [m for m in MITI if m in set(t.metric)]
    if not metrics:
        raise ValueError(f"miti_summary.csv has none of {list(MITI)}")
    pal = sns.color_palette("colorblind")
    sources = list(dict.fromkeys(t.source))
    ref = dict(zip(t.source, t.reference))
    model_colors = itertools.cycle(pal[:2] + pal[4:])  # 8 colours; more sources reuse them
    colors = {
        s: ("0.35" if "high" in s.lower() else "0.7") if ref[s] else next(model_colors)
        for s in sources
    }
    fig, axes = _grid(len(metrics), height=0.25 * len(sources) + 1.0, sharey=True)
    for ax, m in zip(axes, metrics):
        sub = t[t.metric == m]
        _bars(ax, sub, "source", horizontal=True, colors=[colors[s] for s in sub.source])
        notes.empty(ax, sub.value, m) or notes.too_small(ax, sub)
        name, thresholds = MITI[m]
        if thresholds:  # %MI-adherent has no MITI 4.2.1 threshold
            ax.axvline(thresholds[0], color=pal[3], ls="--", lw=1, label="fair")
            ax.axvline(thresholds[1], color=pal[2], ls="-", lw=1, label="good")
        ax.set_title(name)
    how = DEFINITION_NAMES.get(definition, definition)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside upper center",
        ncol=2,
        frameon=False,
        title=f"MITI summary, {how}; 95% CIs resample dialogues",
    )
    return fig


DEFINITION_NAMES = {
    "pooled": "counts pooled over each source's dialogues",
    "per_conversation": "mean over each source's conversations",
}


# ----------------------------------------------------------------------------- (g) behaviour codes
def miti_codes(run_dir, table=None):
    """(g) MITI behaviour codes per source: % of coded utterances given each (n per source); real
    MI is AnnoMI's human codes; a code a source does not annotate is a masked "n/a" cell."""
    t = miti_codes_table(run_dir) if table is None else table
    codes = [c for c in CODES if c in set(t.code)] + sorted(set(t.code) - set(CODES))
    share = (
        t.pivot_table(index="source", columns="code", values="share", sort=False, dropna=False)
        .reindex(columns=codes)
        .mul(100)
    )
    ref = t.groupby("source", sort=False)["reference"].first().reindex(share.index).to_numpy()
    share[~ref] = share[~ref].fillna(
        0.0
    )  # a code the coder never gave: 0 %; a reference's NaN: n/a
    fig, ax = plt.subplots(layout="constrained", figsize=(COL2, 0.35 * len(share) + 1.6))
    sns.heatmap(
        share,
        mask=share.isna(),
        annot=True,
        fmt=".0f",
        cmap="mako_r",
        vmin=0,
        cbar_kws={"label": "% of coded utterances"},
        linewidths=0.5,
        ax=ax,
        annot_kws={"fontsize": 7},
    )
    for i, j in zip(*np.nonzero(share.isna().to_numpy())):
        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=6, color="0.45")
    ax.set_xlabel("n/a: a code the source does not annotate (AnnoMI: Q, SR, CR and GI only)")
    ax.set_ylabel("")
    ax.set_yticklabels([label(s) for s in share.index], rotation=0)
    ax.set_xticklabels(codes, rotation=30, ha="right")
    ax.set_title("MITI behaviour codes: % of coded utterances, pooled over each source's dialogues")
    return fig


# ----------------------------------------------------------------------------- (h) forecaster
def forecaster(run_dir, table=None):
    """(h) The MI forecaster's macro-F1 (and per-class F1) against its baselines, 95% CIs."""
    t = forecaster_table(run_dir) if table is None else table
    macro = t[t.metric == "macro_f1"]
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
        # a figure of an earlier run of this config must not pass for this one's
        for old in [*own.glob(f"{name}.*"), *own.glob(f"tables/{name}.*"), own / KEYS / name]:
            old.unlink(missing_ok=True)
        print(f"[figures] skipped {name}: {e}")
        return None
    fig = figure_fn(run_dir, table)
    if note := smoke.note(run_dir):  # under the figure (savefig's tight box takes it in)
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize="small", color="0.35")
    out = params_mod.path(fp.out_dir)
    (own / "tables").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    files = [own / f"{name}.{fmt}" for fmt in fp.formats]
    key, key_file = _drawn_from(name, run_dir, table, fp), own / KEYS / name
    if not (all(f.exists() for f in files) and key_file.exists() and key_file.read_text() == key):
        for f, fmt in zip(files, fp.formats):  # PDFs embed a subset of the CJK font: slow
            fig.savefig(f, dpi=fp.dpi, metadata=_metadata(fmt))
        key_file.parent.mkdir(exist_ok=True)
        key_file.write_text(key)
    table.to_csv(own / "tables" / f"{name}.csv", index=False)
    (own / "tables" / f"{name}.md").write_text(to_markdown(table), encoding="utf-8")
    files += [own / "tables" / f"{name}.csv", own / "tables" / f"{name}.md"]
    for f in files:
        shutil.copy2(f, out / f.relative_to(own))
    return fig


KEYS = ".drawn_from"  # in 05_figures/: per figure, the sha256 of what its saved files show


def _drawn_from(name: str, run_dir, table: pd.DataFrame, fp) -> str:
    """sha256 of what a figure's files are drawn from: its table, every artifact stage 05 reads,
    the code that builds and draws it (this module, tables, its notes and the smoke line), the
    format settings, the CJK font and matplotlib. A figure whose files exist with this key is not
    saved again."""
    import hashlib

    import matplotlib

    from mi_llm.runs import sha256_file
    from mi_llm.study import tables

    parts = [name, table.to_csv(index=False), repr((fp.formats, fp.dpi)), _cjk_font or ""]
    code = [Path(m.__file__).read_text() for m in (tables, notes, smoke, quality_ties)]
    parts += [matplotlib.__version__, Path(__file__).read_text(), *code]
    parts += [f"{f.name} {sha256_file(f)}" for f in sorted(inputs(run_dir)) if f.is_file()]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


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
        {
            "figure": n,
            "made": (own / "tables" / f"{n}.csv").exists(),
            "files": ", ".join(
                sorted(f.name for f in [*own.glob(f"{n}.*"), *own.glob(f"tables/{n}.*")])
            ),
        }
        for n in FIGURES
    ]
    return pd.DataFrame(rows)


def table(name: str, run_dir) -> pd.DataFrame | None:
    """The saved table of one figure of this run (None when the figure was skipped)."""
    f = stage_dir(run_dir) / "tables" / f"{name}.csv"
    return pd.read_csv(f) if f.exists() else None


def inputs(run_dir) -> list[Path]:
    """The artifact files the figures read that exist in this run (for provenance)."""
    return stages.reads(STAGE, run_dir)
