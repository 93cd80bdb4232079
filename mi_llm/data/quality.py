"""Stage 01, corpus quality: descriptive statistics, an LLM judge with the CPsyCoun rubric, ranking.

Every corpus gets the same descriptive statistics and, on a seeded sample of
its dialogues, rubric scores from an LLM judge: comprehensiveness 0-2, professionalism 0-3,
authenticity 0-3, safety 0-1 (CPsyCoun's turn-based rubric, applied here to the counselor's side of
a whole dialogue; total 0-9). Corpora are ranked by their mean total with a bootstrap CI and the
top k are selected for MI transcription (k=2 in the paper).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import statistics
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm import stages
from mi_llm.data import quality_ties
from mi_llm.data.schema import Dialogue
from mi_llm.llm import cache
from mi_llm.stats import bootstrap_ci

STAGE = "01_corpus_quality"
CRITERIA = {
    "comprehensiveness": 2,
    "professionalism": 3,
    "authenticity": 3,
    "safety": 1,
}  # max points
MAX_TOTAL = sum(CRITERIA.values())  # 9
# The Chinese names the prompt also gives; a judge that answers with them is read exactly, not guessed.
ALIASES = {
    "全面性": "comprehensiveness",
    "专业性": "professionalism",
    "真实性": "authenticity",
    "安全性": "safety",
}
QUALITY_COLUMNS = [  # the contract of quality.csv (later stages and figures rely on it), extras after
    "corpus",
    "n_dialogues",
    "mean_turns",
    "mean_counselor_chars",
    "mean_client_chars",
    "question_rate",
    "duplicate_rate",
    *CRITERIA,
    "total",
    "total_ci_low",
    "total_ci_high",
    "rank",
    "selected",
]
FIXTURE_COLUMN = "fixture"  # describe()'s flag: a column of quality.csv after QUALITY_COLUMNS
JUDGEMENT_FIELDS = ("corpus", "ok", "scores", "total")  # judgements.jsonl fields later stages read
LABELS = {"client": "来访者", "counselor": "咨询师"}  # speaker labels in the judge's transcript


# ----------------------------------------------------------------------------- statistics
_CLAUSE_END = re.compile(r"[。！!；;，,\n…~～.]+")
_TRAILING = "\"'”’」』）)】] \t"


def is_question(text: str) -> bool:
    """True when a turn asks something: it contains ? or ？, or a clause ends with 吗 or 呢.

    Clauses are split at 。！!；;，,… and line breaks; closing quotes/brackets are ignored. 吗 and 呢
    are the Chinese sentence-final question particles (你愿意试试吗 / 你怎么看呢); 吧 and 么 are not
    counted because they mostly end suggestions (我们试试吧) or belong to 什么/怎么 inside a clause.
    """
    if "?" in text or "？" in text:
        return True
    return any(c.rstrip(_TRAILING).endswith(("吗", "呢")) for c in _CLAUSE_END.split(text))


# NFKC of the full-width ASCII forms (U+FF01-FF5E) and the ideographic space: the characters of
# Chinese text that NFKC changes. Mapping them first lets most turns skip the slow normalize().
_FULL_WIDTH = {chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)} | {"\u3000": " "}
_FULL_WIDTH_RE = re.compile("[\uff01-\uff5e\u3000]")


def normalise(text: str) -> str:
    """Text for duplicate detection: NFKC (full/half width alike), lower case, no whitespace."""
    text = _FULL_WIDTH_RE.sub(lambda m: _FULL_WIDTH[m.group()], text)  # as NFKC maps them
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return "".join(text.split()).lower()  # str.split() splits at every Unicode whitespace


def _normalised(d: Dialogue) -> list[tuple[str, str]]:
    return [(t.speaker, normalise(t.text)) for t in d.turns]


def _hash(norm: list[tuple[str, str]]) -> str:
    """Dialogue.content_hash of normalised turns (the same JSON payload)."""
    return hashlib.sha256(json.dumps(norm, ensure_ascii=False).encode("utf-8")).hexdigest()


def normalised_hash(d: Dialogue) -> str:
    """content hash of a dialogue after normalise() of every turn (speaker order kept)."""
    return _hash(_normalised(d))


def _mean(xs) -> float:
    return float(statistics.fmean(xs)) if xs else math.nan


def describe(dialogues: list[Dialogue], report: dict | None = None) -> dict:
    """Descriptive statistics of one corpus (chars are characters of a stripped turn text).

    question_rate: share of counselor turns for which is_question() holds. duplicate_rate: share of
    dialogues whose normalised content equals an earlier dialogue's. repeated_turn_rate: share of
    counselor turns whose normalised text already occurred earlier in the corpus (near-duplicate
    turns; high values mean stock phrases). alternation_violations: adjacent same-speaker turn pairs.
    single_speaker_dialogues: dialogues in which one speaker alone speaks.
    n_bad: malformed records the loader skipped (from its report). fixture: the loader report
    says the corpus is a fixture written for this project (its PROVENANCE.json), not real data.
    """
    n_turns = [len(d.turns) for d in dialogues]
    counselor = [t.text.strip() for d in dialogues for t in d.turns if t.speaker == "counselor"]
    client = [t.text.strip() for d in dialogues for t in d.turns if t.speaker == "client"]
    seen_dialogues, seen_turns, n_dup, n_rep = set(), set(), 0, 0
    for d in dialogues:  # each turn is normalised once, for both counts
        norm = _normalised(d)
        h = _hash(norm)
        n_dup += h in seen_dialogues
        seen_dialogues.add(h)
        for speaker, key in norm:
            if speaker == "counselor":
                n_rep += key in seen_turns
                seen_turns.add(key)
    violations = [
        sum(a.speaker == b.speaker for a, b in zip(d.turns, d.turns[1:])) for d in dialogues
    ]
    return {
        "n_dialogues": len(dialogues),
        "n_turns": sum(n_turns),
        "mean_turns": _mean(n_turns),
        "median_turns": float(statistics.median(n_turns)) if n_turns else math.nan,
        "mean_counselor_chars": _mean([len(t) for t in counselor]),
        "mean_client_chars": _mean([len(t) for t in client]),
        "question_rate": _mean([is_question(t) for t in counselor]),
        "duplicate_rate": n_dup / len(dialogues) if dialogues else math.nan,
        "repeated_turn_rate": n_rep / len(counselor) if counselor else math.nan,
        "alternation_violations": sum(violations),
        "dialogues_with_violations": sum(v > 0 for v in violations),
        "single_speaker_dialogues": sum(len({t.speaker for t in d.turns}) < 2 for d in dialogues),
        "n_bad": int((report or {}).get("n_bad", 0)),
        FIXTURE_COLUMN: bool((report or {}).get("fixture", False)),  # written for this project
    }


def load_corpora(P) -> dict[str, tuple[list[Dialogue], dict]]:
    """Load every corpus of P.corpora.sources: name -> (dialogues, loader report), limit applied.

    Refuses (ValueError) a missing path and a fixture (corpora.corpus_problems) unless
    P.corpora.allow_fixtures; the report's "fixture" says whether the corpus is one.
    """
    from mi_llm import params
    from mi_llm.data import corpora

    problems = corpora.corpus_problems(P)  # a missing path, or a fixture without allow_fixtures
    if problems:
        raise ValueError("corpora: " + "\n".join(problems))
    out = {}
    for name, src in P.corpora.sources.items():
        dialogues, report = corpora.load_with_report(
            name, params.path(src), on_error=P.corpora.on_error, limit=P.corpora.limit
        )
        out[name] = (dialogues, {**report, "fixture": corpora.is_fixture(params.path(src))})
    return out


def describe_all(loaded: dict[str, tuple[list[Dialogue], dict]]) -> pd.DataFrame:
    """One row of describe() per corpus, in the order given."""
    return pd.DataFrame(
        [{"corpus": name, **describe(ds, rep)} for name, (ds, rep) in loaded.items()]
    )


# ----------------------------------------------------------------------------- the judge's prompt
def prompt_template(version: str) -> dict[str, str]:
    """The judge prompt's parts: "system", "user" (with a {dialogue} slot), optional few-shot pairs."""
    from mi_llm.llm import prompts

    parts = prompts.parts(version)
    if not {"system", "user"} <= set(parts) or "{dialogue}" not in parts["user"]:
        raise ValueError(
            f"prompt {version}: needs '## system' and '## user' sections, the user one"
            f" with a {{dialogue}} slot; found sections {sorted(parts)}"
        )
    return parts


def render_dialogue(d: Dialogue, max_chars: int) -> tuple[str, bool]:
    """The dialogue as '来访者：…' / '咨询师：…' lines, cut to max_chars at a turn boundary.

    Whole turns are kept from the start while they fit; a first turn longer than the budget is cut
    mid-text. A cut transcript ends with a note saying how many turns were left out (the prompt
    tells the judge to score only what it sees). Returns (text, truncated).
    """
    lines, used, cut = [], 0, False
    for t in d.turns:
        line = f"{LABELS[t.speaker]}：{t.text.strip()}"
        if used + len(line) > max_chars:
            if not lines:  # one huge first turn: show its beginning rather than nothing
                lines.append(line[:max_chars])
                cut = True
            break
        lines.append(line)
        used += len(line) + 1  # +1 for the line break
    hidden = len(d.turns) - len(lines)  # turns not shown at all
    text = "\n".join(lines)
    if cut or hidden:
        text += f"\n……（对话过长，已截断；后面还有 {hidden} 轮未显示）"
    return text, cut or hidden > 0


def judge_messages(d: Dialogue, template: dict, max_chars: int) -> tuple[list[dict], bool]:
    """System rubric + user transcript for one dialogue; returns (messages, truncated)."""
    from mi_llm.llm import prompts

    text, truncated = render_dialogue(d, max_chars)
    user = prompts.render(template["user"], dialogue=text)
    return [
        {"role": "system", "content": template["system"]},
        *prompts.shots(template),
        {"role": "user", "content": user},
    ], truncated


# ----------------------------------------------------------------------------- the judge's answer
def _json_objects(text: str):
    """Every JSON object in the text: fenced ```json blocks first, then any {...} from left to right."""
    dec = json.JSONDecoder()
    blocks = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL) + [text]
    for block in blocks:
        for m in re.finditer(r"\{", block):
            try:
                obj, _ = dec.raw_decode(block, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


def parse_judgement(text: str) -> dict:
    """The four rubric scores from a judge's answer; ValueError(reason) when any is unusable.

    Accepts a JSON object alone, in ``` fences or with prose around it; keys are the English
    criterion names (any case) or their Chinese names; extra keys are ignored. Every criterion must
    be present and a whole number (int, or a float like 2.0; not a string, not bool) within its
    range: the rubric awards whole points. Nothing is guessed or clamped.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    candidates = []
    for obj in _json_objects(text):
        keyed = {ALIASES.get(str(k).strip(), str(k).strip().lower()): v for k, v in obj.items()}
        if any(c in keyed for c in CRITERIA):
            candidates.append(keyed)
    if not candidates:
        raise ValueError("no JSON object with rubric scores in the answer")
    obj, scores = candidates[0], {}
    for c, top in CRITERIA.items():
        if c not in obj:
            raise ValueError(f"missing criterion {c!r}")
        v = obj[c]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{c}: {v!r} is not a number")  # noqa: TRY004 (api.complete retries on ValueError)
        if not (math.isfinite(v) and float(v).is_integer()):
            raise ValueError(f"{c}: {v!r} is not a whole number of points")
        if not 0 <= v <= top:
            raise ValueError(f"{c}: {v!r} is outside 0..{top}")
        scores[c] = int(v)
    return scores


# ----------------------------------------------------------------------------- judging
def sample_dialogues(dialogues: list[Dialogue], n: int, seed: int, corpus: str) -> list[Dialogue]:
    """n dialogues drawn without replacement, seeded by (seed, corpus) so each corpus's draw is
    independent of the others and of their order; returned in corpus order."""
    rng = random.Random(f"{seed}:{corpus}")  # str seeds are hashed with sha512: stable across runs
    idx = sorted(rng.sample(range(len(dialogues)), min(n, len(dialogues))))
    return [dialogues[i] for i in idx]


def judge_samples(loaded: dict, P) -> dict[str, list[Dialogue]]:
    """The judge's sample of every loaded corpus: name -> P.quality.judge_sample dialogues."""
    return {
        name: sample_dialogues(ds, P.quality.judge_sample, P.seed, name)
        for name, (ds, _) in loaded.items()
    }


def judge(ep, samples: dict[str, list[Dialogue]], P) -> tuple[list[dict], dict]:
    """Score every sampled dialogue with the LLM judge: (records for judgements.jsonl, api.usage).

    An answer that parse_judgement rejects is asked again up to P.quality.parse_retries times, then
    recorded with ok=False and the reason; every raw answer is kept in `answers`.
    """
    from mi_llm.llm import api, prompts

    q = P.quality
    template, version = prompt_template(q.prompt_version), prompts.name(q.prompt_version)
    units, requests = [], []
    for corpus, ds in samples.items():
        for d in ds:
            messages, truncated = judge_messages(d, template, q.max_dialogue_chars)
            units.append((corpus, d, truncated))
            requests.append(api.Request(f"{version}:{corpus}:{d.id}:{d.content_hash()}", messages))
    settings = {"temperature": q.temperature, "max_tokens": q.max_tokens}
    results = api.complete(
        ep,
        requests,
        llm_params=P.llm,
        cache_path=cache.cache_path(P),
        settings=settings,
        validate=parse_judgement,
        retries=q.parse_retries,
        desc="judge",
        truncated_ok=True,
    )  # a complete JSON object before the cut is an answer
    records = [
        _record(corpus, d, truncated, r, version, ep)
        for (corpus, d, truncated), r in zip(units, results)
    ]
    return records, api.usage(results, P.llm, ep.model)


def _record(corpus, d: Dialogue, truncated: bool, r, prompt_version: str, ep) -> dict:
    scores = dict(r.parsed) if r.ok else None
    return {
        "corpus": corpus,
        "dialogue_id": d.id,
        "source": d.source,
        "prompt_version": prompt_version,
        "model": ep.model,
        "provider": ep.provider,
        "truncated": truncated,
        "ok": r.ok,
        "scores": scores,
        "total": sum(scores.values()) if scores else None,
        "error": None if r.ok else r.error,
        "attempts": r.attempts,
        "answers": list(r.raw),
        "rejections": list(getattr(r, "errors", [])),
        "cached": r.cached,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
    }


def judgements_table(records: list[dict]) -> pd.DataFrame:
    """One row per judged dialogue: corpus, dialogue, the four scores, total, attempts, error."""
    rows = [
        {
            "corpus": r["corpus"],
            "dialogue_id": r["dialogue_id"],
            **{c: (r["scores"] or {}).get(c, math.nan) for c in CRITERIA},
            "total": math.nan if r["total"] is None else r["total"],
            "attempts": r["attempts"],
            "truncated": r["truncated"],
            "error": r["error"],
        }
        for r in records
    ]
    return pd.DataFrame(
        rows,
        columns=["corpus", "dialogue_id", *CRITERIA, "total", "attempts", "truncated", "error"],
    )


# ----------------------------------------------------------------------------- ranking
MIN_CI_JUDGED = 5  # judged dialogues a corpus needs for its total's CI; fewer: NaN and ci_note


def rank(
    stats: pd.DataFrame, records: list[dict], top_k: int, bootstrap: int, seed: int
) -> pd.DataFrame:
    """quality.csv: statistics + mean rubric scores, bootstrap CI of the total, rank, selection.

    Means are over the judged dialogues; missing judgements are excluded and counted (n_missing).
    Order: higher mean total first; ties go to the higher total_ci_low (the surer corpus), then the
    larger corpus (n_dialogues: more to transcribe), then the name. A corpus with no usable
    judgement has total NaN and ranks after every judged corpus. `selected` marks the first top_k
    ranks, filled by rank even when that reaches unjudged corpora (n_judged says so), so the next
    stage always gets k corpora. Each corpus's CI uses seed + its position in `stats`. Equal
    totals are a tie, said in tied_with and selection_note (quality_ties.mark).
    """
    missing = [c for c in QUALITY_COLUMNS[:7] if c not in stats.columns]
    if missing:
        raise ValueError(f"rank: the statistics table lacks {missing} (build it with describe_all)")
    by_corpus = {c: [r for r in records if r["corpus"] == c] for c in stats["corpus"]}
    rows = []
    for i, (corpus, recs) in enumerate(by_corpus.items()):
        judged = [r for r in recs if r["ok"]]
        row = {c: _mean([r["scores"][c] for r in judged]) for c in CRITERIA}
        totals = [r["total"] for r in judged]
        low, high = bootstrap_ci(totals, bootstrap, seed + i)
        note = ""
        if len(totals) < MIN_CI_JUDGED:  # a bootstrap of 1-4 values is no interval (often width 0)
            low = high = math.nan
            note = f"no CI: {len(totals)} judged dialogue(s), fewer than {MIN_CI_JUDGED}"
        rows.append(
            {
                "corpus": corpus,
                **row,
                "total": _mean(totals),
                "total_ci_low": low,
                "total_ci_high": high,
                "n_judged": len(judged),
                "n_missing": len(recs) - len(judged),
                "ci_note": note,
            }
        )
    df = stats.merge(
        pd.DataFrame(
            rows,
            columns=[
                "corpus",
                *CRITERIA,
                "total",
                "total_ci_low",
                "total_ci_high",
                "n_judged",
                "n_missing",
                "ci_note",
            ],
        ),
        on="corpus",
    )
    key = df.assign(
        _nan=df["total"].isna(),
        _t=-df["total"].fillna(0),
        _lo=-df["total_ci_low"].fillna(-1),
        _n=-df["n_dialogues"],
    )
    order = key.sort_values(["_nan", "_t", "_lo", "_n", "corpus"], kind="stable").index
    df = df.loc[order].reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    df["selected"] = df["rank"] <= top_k
    df = quality_ties.mark(df)
    extras = [c for c in df.columns if c not in QUALITY_COLUMNS]
    return df[QUALITY_COLUMNS + extras]


# ----------------------------------------------------------------------------- artifacts
def write_artifacts(out_dir: Path, ranked: pd.DataFrame, records: list[dict]) -> list[Path]:
    """Write quality.csv and judgements.jsonl into the stage folder; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / stages.file_name(stages.QUALITY)
    jsonl = out_dir / stages.file_name(stages.JUDGEMENTS)
    from mi_llm.runs import atomic_path, write_atomic  # a unique temporary file, then a rename

    with atomic_path(csv) as tmp:
        ranked.to_csv(tmp, index=False)
    write_atomic(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return [csv, jsonl]


def plot_totals(ranked: pd.DataFrame, ax=None):
    """Bar plot of the mean rubric total per corpus (rank order) with its 95% bootstrap CI;
    fixtures (column `fixture`) are hatched and named in the legend."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3))[1]
    total = ranked["total"].to_numpy(float)
    err = np.vstack([total - ranked["total_ci_low"], ranked["total_ci_high"] - total])
    colors = ["tab:blue" if s else "tab:gray" for s in ranked["selected"]]
    fixture = ranked["fixture"] if "fixture" in ranked else pd.Series(False, index=ranked.index)
    bars = ax.bar(
        ranked["corpus"],
        np.nan_to_num(total),
        yerr=np.nan_to_num(err),
        color=colors,
        capsize=4,
        hatch=["//" if f else "" for f in fixture],
        edgecolor="white",
    )
    ax.set_ylim(0, MAX_TOTAL)
    ax.set_ylabel(f"mean rubric total (0-{MAX_TOTAL})")
    title = "Corpus quality: LLM judge, 95% bootstrap CI (blue = selected)"
    if note := quality_ties.tie_note(ranked):
        title += "\n" + textwrap.fill(note, 90)
    if fixture.any():
        title += "\nhatched: fixture written for this project, not the real corpus"
        ax.legend([bars[int(np.flatnonzero(fixture.to_numpy())[0])]], ["fixture"], fontsize=8)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    return ax
