"""MITI 4.2.1 worksheets for human coders (export, import) and inter-rater agreement (kappa, ICC).

One CSV per coded dialogue; the layout is written into the folder as README.md (see README below).
Cohen's kappa (scikit-learn) compares behaviour codes utterance by utterance; ICC(2,1) (two-way
random effects, absolute agreement, single rater; Shrout & Fleiss 1979) compares global ratings
dialogue by dialogue.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from mi_llm.data.schema import DataError
from mi_llm.eval.miti import CODES, GLOBAL_MAX, GLOBAL_MIN, GLOBALS, code_label, code_set
from mi_llm.stats import cohen_kappa

COLUMNS = ["row", "speaker", "text", *CODES, "rating", "note"]
TICKS = {"x", "1", "✓", "✔", "yes", "y"}  # a ticked code cell (case-insensitive); blank or 0: not
AGREEMENT_COLUMNS = [
    "comparison",
    "n_sampled",
    "n_coded",
    "n_missing",
    "pass_rate",
    "n_compared",
    "n_clusters",
    "accuracy",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "labels",
    "n_rated",
    *(f"icc_{g}" for g in GLOBALS),
]
README = f"""# MITI 4.2.1 coding worksheets

One CSV file per dialogue (UTF-8 with BOM, so spreadsheet programs show Chinese correctly);
`index.csv` lists which model, variant and dialogue each file holds. Columns:

| column | meaning |
|---|---|
| row | utterance number 1..n (a counselor reply is cut into its utterances, one row each), then one row per global: {", ".join(GLOBALS)} |
| speaker | client, counselor, or global (for the global rows) |
| text | the utterance; for a global row, the scale's name |
| {" / ".join(CODES)} | behaviour codes: {"; ".join(f"{k} = {v}" for k, v in CODES.items())} |
| rating | global rows only: an integer {GLOBAL_MIN}-{GLOBAL_MAX} (blank: not rated) |
| note | free text, ignored on import |

How to code: put an `x` in the code column of the one behaviour a **counselor** row holds (MITI
4.2.1 codes each utterance with one behaviour; leave the row blank when none applies); client rows
stay blank. Give each global row a rating.
Do not add, remove or reorder rows. Save as CSV and put each coder's files in a folder of their own
(keep the file names); `evaluation.miti.human_worksheets` maps coder names to those folders.
Accepted ticks: {", ".join(sorted(TICKS))} (any case); blank or 0 means not ticked.
"""


def worksheet_name(unit: dict) -> str:
    """File stem of a unit's worksheet: model__variant__dialogue, safe characters only."""
    raw = f"{unit['model']}__{unit['variant']}__{unit['dialogue_id']}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def export(units: list[dict], folder) -> list[Path]:
    """Write a blank worksheet per unit, index.csv and README.md into folder; return the worksheets."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(README, encoding="utf-8")
    files, index = [], []
    for u in units:
        stem = worksheet_name(u)
        if any(r["file"] == f"{stem}.csv" for r in index):
            raise ValueError(f"two units share the worksheet name {stem!r}")
        rows = [
            {"row": i, "speaker": t["speaker"], "text": t["text"]}
            for i, t in enumerate(u["turns"], 1)
        ]
        rows += [
            {"row": g, "speaker": "global", "text": f"{name} ({GLOBAL_MIN}-{GLOBAL_MAX})"}
            for g, name in GLOBALS.items()
        ]
        file = folder / f"{stem}.csv"
        with open(file, "w", encoding="utf-8-sig", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
        files.append(file)
        index.append(
            {
                "file": file.name,
                "model": u["model"],
                "variant": u["variant"],
                "dialogue_id": u["dialogue_id"],
                "topic": u.get("topic") or "",
                "n_utterances": sum(t["speaker"] == "counselor" for t in u["turns"]),
            }
        )
    with open(folder / "index.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["file", "model", "variant", "dialogue_id", "topic", "n_utterances"])
        w.writeheader()
        w.writerows(index)
    return files


def _ticked(value: str, file, line: int, col: str) -> bool:
    v = (value or "").strip().lower()
    if v in ("", "0"):
        return False
    if v in TICKS:
        return True
    raise DataError(file, f"line {line}", col, f"{value!r} is not a tick (use x, or leave blank)")


def read_worksheet(file) -> dict:
    """A filled worksheet: {"codes": [tuple of ticked codes per counselor row, () for none],
    "globals": {g: int | None}}."""
    file = Path(file)
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS[:-1] if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(file, "line 1", missing[0], "missing column")
        rows = list(reader)
    codes, globals_, n_utt = [], {}, 0
    for line, r in enumerate(rows, 2):  # line 1 is the header
        speaker = (r["speaker"] or "").strip()
        ticks = [c for c in CODES if _ticked(r[c], file, line, c)]
        if speaker == "global":
            g = (r["row"] or "").strip().upper()
            if g not in GLOBALS or g in globals_:
                raise DataError(
                    file, f"line {line}", "row", f"{r['row']!r}: unknown or repeated global"
                )
            if ticks:
                raise DataError(
                    file, f"line {line}", ticks[0], "global rows take a rating, not codes"
                )
            globals_[g] = _rating(r["rating"], file, line)
            continue
        n_utt += 1
        if speaker not in ("client", "counselor") or str(r["row"]).strip() != str(n_utt):
            raise DataError(
                file,
                f"line {line}",
                "speaker" if speaker not in ("client", "counselor") else "row",
                f"expected utterance row {n_utt} by client or counselor",
            )
        try:
            code_set(ticks, "")
        except ValueError:
            raise DataError(
                file,
                f"line {line}",
                ticks[-1],
                f"codes {ticks}: an utterance takes one behaviour code",
            ) from None
        if speaker == "client" and ticks:
            raise DataError(file, f"line {line}", ticks[0], "client utterances are not coded")
        if (r["rating"] or "").strip():
            raise DataError(file, f"line {line}", "rating", "only global rows take a rating")
        if speaker == "counselor":
            codes.append(tuple(ticks))
    absent = [g for g in GLOBALS if g not in globals_]
    if absent:
        raise DataError(file, "end", "row", f"global row(s) {absent} missing")
    return {"codes": codes, "globals": globals_}


def _rating(value: str, file, line: int) -> int | None:
    v = (value or "").strip()
    if not v:
        return None
    if not re.fullmatch(r"\d+(\.0+)?", v) or not GLOBAL_MIN <= int(float(v)) <= GLOBAL_MAX:
        raise DataError(
            file, f"line {line}", "rating", f"{value!r} is not an integer {GLOBAL_MIN}-{GLOBAL_MAX}"
        )
    return int(float(v))


def read_folder(folder) -> dict[str, dict]:
    """Every filled worksheet of a folder, keyed by file stem (index.csv is skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such worksheet folder")
    return {
        f.stem: read_worksheet(f) for f in sorted(folder.glob("*.csv")) if f.name != "index.csv"
    }


def auto_coded(units: list[dict]) -> dict[str, dict]:
    """The automatic coder's answers in worksheet form (missing codes and ratings are None)."""
    out = {}
    for u in units:
        code_of = {ut["turn"]: _as_tuple(ut.get("codes")) for ut in u["utterances"]}
        codes = [code_of.get(i) for i, t in enumerate(u["turns"]) if t["speaker"] == "counselor"]
        out[worksheet_name(u)] = {"codes": codes, "globals": dict(u.get("globals") or {})}
    return out


def _as_tuple(codes):
    return None if codes is None else tuple(codes)


# ----------------------------------------------------------------------------- agreement
def icc_2_1(ratings) -> float:
    """ICC(2,1) of an (n targets x k raters) matrix: two-way random, absolute agreement, one rater.

    (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n), the mean squares of a two-way ANOVA without
    replication (Shrout & Fleiss 1979, Table 2). NaN with fewer than 2 targets or raters, or when
    the ratings have no variance at all (0/0).
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or np.isnan(x).any():
        return math.nan
    n, k = x.shape
    grand = x.mean()
    bms = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)  # between targets
    jms = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)  # between raters (judges)
    ems = (((x - grand) ** 2).sum() - bms * (n - 1) - jms * (k - 1)) / ((n - 1) * (k - 1))
    denom = bms + (k - 1) * ems + k * (jms - ems) / n
    return float((bms - ems) / denom) if denom > 0 else math.nan


def agreement(a: dict, b: dict, comparison: str) -> dict:
    """Agreement of two coders over the worksheets both have: kappa on codes, ICC per global."""
    common = sorted(set(a) & set(b))
    pairs, n_sampled = [], 0
    for stem in common:
        ca, cb = a[stem]["codes"], b[stem]["codes"]
        if len(ca) != len(cb):
            raise DataError(
                stem, "worksheet", "codes", f"{len(ca)} vs {len(cb)} counselor utterances"
            )
        n_sampled += len(ca)
        pairs += [
            (code_label(x), code_label(y))
            for x, y in zip(ca, cb)
            if x is not None and y is not None
        ]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    row = {
        "comparison": comparison,
        "n_sampled": n_sampled,
        "n_coded": len(pairs),
        "n_missing": n_sampled - len(pairs),
        "pass_rate": len(pairs) / n_sampled if n_sampled else math.nan,
        "n_compared": len(pairs),
        "accuracy": float(np.mean([x == y for x, y in pairs])) if pairs else math.nan,
        "kappa": cohen_kappa(xs, ys),
        "labels": " ".join(sorted(set(xs) | set(ys))),
    }
    rated = [
        s
        for s in common
        if all(
            a[s]["globals"].get(g) is not None and b[s]["globals"].get(g) is not None
            for g in GLOBALS
        )
    ]
    row["n_rated"] = len(rated)
    for g in GLOBALS:
        row[f"icc_{g}"] = icc_2_1([[a[s]["globals"][g], b[s]["globals"][g]] for s in rated])
    return row


def human_agreement(folders: dict, units: list[dict]) -> list[dict]:
    """Agreement rows for each pair of human coders and of each human coder with the automatic one."""
    from mi_llm.params import path

    coders = {name: read_folder(path(folder)) for name, folder in (folders or {}).items()}
    names = sorted(coders)
    rows = [
        agreement(coders[x], coders[y], f"{x}_vs_{y}")
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    ]
    auto = auto_coded(units)
    return rows + [agreement(coders[x], auto, f"{x}_vs_auto") for x in names]
