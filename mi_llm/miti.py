"""MITI 4.2.1 coding: vocabulary, summary scores, an LLM coder, and real MI (AnnoMI) as reference.

The automatic coder asks, through the same OpenAI-compatible client as the judge and the
transcriber (mi_llm.llm), one request per counselor utterance (the utterance with a few turns of
preceding context; the answer is one code word) and one request per dialogue for the four globals
(a JSON answer). Small models can answer a one-word question; a whole-dialogue JSON of codes they
cannot. Unparseable answers are asked again, then recorded as missing; raw answers are kept.

Counts are pooled over a group's dialogues before the ratios are taken (%CR, R:Q), so groups of
short dialogues are not dominated by the many dialogues whose own ratio is undefined; globals are
the mean of the dialogues' ratings. A ratio with a zero denominator is NaN, never 0 or infinity.
Worksheets for human coders and agreement statistics are in mi_llm.worksheets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import DataError

# ----------------------------------------------------------------------------- vocabulary
CODES = {  # MITI 4.2.1 behaviour codes: short code -> name
    "GI": "Giving Information", "PERSUADE": "Persuade", "PERSUADE_PERM": "Persuade with Permission",
    "Q": "Question", "SR": "Simple Reflection", "CR": "Complex Reflection", "AF": "Affirm",
    "SEEK": "Seeking Collaboration", "AUTO": "Emphasizing Autonomy", "CONFRONT": "Confront",
}
NONE = "NONE"  # a coded utterance with none of the behaviours (None means: not coded / missing)
GLOBALS = {  # MITI 4.2.1 global ratings, integers 1..5
    "CCT": "Cultivating Change Talk", "SST": "Softening Sustain Talk",
    "PARTNER": "Partnership", "EMPATHY": "Empathy",
}
GLOBAL_MIN, GLOBAL_MAX = 1, 5
THRESHOLDS = {  # (fair, good) of MITI 4.2.1; pct_cr in percent
    "relational": (3.5, 4.0), "technical": (3.0, 4.0), "pct_cr": (40.0, 50.0), "r_q": (1.0, 2.0),
}
SCORES = ["technical", "relational", "pct_cr", "r_q", "mi_adherent", "mi_non_adherent"]
SUMMARY_COLUMNS = ["group", "model", "variant", *SCORES, "n_dialogues", "n_utterances", "n_coded",
                   "pass_rate", "n_rated", *(f"{s}_label" for s in THRESHOLDS), *CODES, *GLOBALS]
_NAMES = {re.sub(r"\W+", "_", v).upper(): k for k, v in CODES.items()}  # "SIMPLE_REFLECTION" -> "SR"

DEFAULTS = {  # P.evaluation.miti keys; paths relative to the project root
    "enabled": True,  # false: stage 04 skips MITI coding
    "prompt_version": "miti_v2",  # mi_llm/prompts/<version>.md with `## code` and `## globals`
    "max_tokens": 8,  # tokens of a code answer (one code word)
    "globals_max_tokens": 64,  # tokens of the globals JSON answer
    "temperature": 0.0,
    "parse_retries": 1,  # an unparseable answer is asked again this often, then marked missing
    "context_turns": 4,  # turns of preceding conversation shown with each utterance
    "max_utterances": None,  # counselor utterances coded per dialogue; None: all
    "rate_globals": True,  # also rate the four globals per dialogue
    "annomi_path": "data/AnnoMI",  # folder (simple + full CSV) read by mi_llm.corpora
    "annomi_sample": 40,  # AnnoMI therapist utterances coded for the coder check; 0: none
    "human_worksheets": {},  # coder name -> folder of filled worksheets, for agreement
}


def settings(p) -> dict:
    """P.evaluation.miti merged over DEFAULTS; unknown keys raise ParamsError."""
    from .params import ParamsError

    given = dict(p.evaluation.miti or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ParamsError(f"evaluation.miti: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given}


# ----------------------------------------------------------------------------- summary scores
def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan  # 0/0 and x/0 are undefined: NaN


def label(score: str, value: float) -> str:
    """'below fair' | 'fair' | 'good' against the MITI 4.2.1 thresholds; 'n/a' for NaN."""
    fair, good = THRESHOLDS[score]
    if value is None or math.isnan(value):
        return "n/a"
    return "good" if value >= good else "fair" if value >= fair else "below fair"


def summary_scores(counts: dict, globals_: dict | None = None) -> dict:
    """MITI summary scores from behaviour counts (missing code: 0, NaN: not annotated) and globals.

    technical = (CCT+SST)/2, relational = (PARTNER+EMPATHY)/2, pct_cr = 100*CR/(SR+CR),
    r_q = (SR+CR)/Q, mi_adherent = SEEK+AF+AUTO, mi_non_adherent = PERSUADE+CONFRONT.
    """
    c = {k: float(counts.get(k, 0)) for k in CODES}
    g = {k: float((globals_ or {}).get(k, math.nan)) for k in GLOBALS}
    out = {
        "technical": (g["CCT"] + g["SST"]) / 2,
        "relational": (g["PARTNER"] + g["EMPATHY"]) / 2,
        "pct_cr": 100 * _div(c["CR"], c["SR"] + c["CR"]),
        "r_q": _div(c["SR"] + c["CR"], c["Q"]),
        "mi_adherent": c["SEEK"] + c["AF"] + c["AUTO"],
        "mi_non_adherent": c["PERSUADE"] + c["CONFRONT"],
    }
    out.update({f"{s}_label": label(s, out[s]) for s in THRESHOLDS})
    return out


def count_codes(codes) -> dict:
    """Behaviour counts of a list of codes (NONE and missing None are not behaviours)."""
    return {k: sum(c == k for c in codes) for k in CODES}


# ----------------------------------------------------------------------------- parsing answers
_LEADING_CODE = re.compile(r"(PERSUADE_PERM|PERSUADE|CONFRONT|SEEK|AUTO|NONE|GI|SR|CR|AF|Q)(?![A-Za-z_])")


def parse_code(text: str) -> str:
    """The one code (or NONE) a coder answered; ValueError when it is not exactly one known code."""
    s = (text or "").strip()
    if s.startswith(("{", "```")):
        obj = _json_object(s)
        if set(obj) != {"code"}:
            raise ValueError(f"JSON answer must have the one key 'code', got {sorted(obj)}")
        s = str(obj["code"])
    line = next((ln for ln in s.splitlines() if ln.strip()), "")
    line = line.strip().strip("`*\"'“”「」.。 ")
    norm = re.sub(r"\W+", "_", line).strip("_").upper()
    if norm in CODES or norm == NONE:
        return norm
    if norm in _NAMES:
        return _NAMES[norm]
    first = re.split(r"[\s:：,，;(（\-–]+", line, maxsplit=1)[0]
    if first in CODES or first == NONE:  # "SR - the counselor ..." : the code, spelled as asked
        return first
    m = _LEADING_CODE.match(line)
    if m:  # "CRспекти…": the code word, then a run-on that is not part of any code
        return m.group(1)
    raise ValueError(f"not a MITI code: {line[:60]!r}")


def _json_object(text: str) -> dict:
    """The first JSON object in an answer (code fences allowed); ValueError when there is none."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("the JSON answer is not an object")
    return obj


def parse_globals(text: str) -> dict:
    """The four global ratings {CCT, SST, PARTNER, EMPATHY} as integers 1..5; ValueError otherwise."""
    obj = _json_object(text or "")
    keys = {re.sub(r"\W+", "_", str(k)).upper(): k for k in obj}
    names = {re.sub(r"\W+", "_", v).upper(): k for k, v in GLOBALS.items()}
    keys = {names.get(k, k): v for k, v in keys.items()}  # full names are the same keys
    if set(keys) != set(GLOBALS):
        raise ValueError(f"keys must be {sorted(GLOBALS)}, got {sorted(map(str, obj))}")
    out = {}
    for g, k in keys.items():
        v = obj[k]
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not GLOBAL_MIN <= v <= GLOBAL_MAX:
            raise ValueError(f"{g} must be an integer {GLOBAL_MIN}-{GLOBAL_MAX}, got {v!r}")
        out[g] = v
    return out


# ----------------------------------------------------------------------------- coding units
# A unit is one dialogue to code: {"model", "variant", "dialogue_id", "topic", "turns": [{"speaker",
# "text"}], "utterances": [{"turn": index into turns, "round", "context": [{"speaker", "text"}]}]}.
_SPEAKER = {"user": "client", "assistant": "counselor"}


def units_from_generations(path, max_utterances: int | None = None) -> list[dict]:
    """Group generations.jsonl by (model, variant, dialogue_id) into units, rounds in order.

    A unit's transcript is, per round, the client's last turn and the generated reply; each reply
    is coded with the gold history it was generated from as its context.
    """
    groups: dict[tuple, list] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {i}", "line", f"not JSON: {e.msg}") from None
            for k in ("model", "variant", "dialogue_id", "round", "messages", "reply"):
                if k not in r:
                    raise DataError(path, f"line {i}", k, "missing")
            groups.setdefault((r["model"], r["variant"], str(r["dialogue_id"])), []).append(r)
    units = []
    for (model, variant, did), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["round"])[:max_utterances]
        unit = {"model": model, "variant": variant, "dialogue_id": did,
                "topic": recs[0].get("topic"), "turns": [], "utterances": []}
        for r in recs:
            context = [{"speaker": _SPEAKER[m["role"]], "text": m["content"]}
                       for m in r["messages"] if m["role"] in _SPEAKER]
            if context and context[-1]["speaker"] == "client":
                unit["turns"].append(context[-1])
            unit["turns"].append({"speaker": "counselor", "text": r["reply"]})
            unit["utterances"].append({"turn": len(unit["turns"]) - 1, "round": r["round"],
                                       "context": context})
        units.append(unit)
    return units


def render_turns(turns: list[dict]) -> str:
    """A transcript, one 'Client: ...' / 'Counselor: ...' line per turn."""
    return "\n".join(f"{t['speaker'].capitalize()}: {t['text'].strip()}" for t in turns)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:20]


def code_units(ep, units: list[dict], p, cfg: dict, rate_globals: bool = True) -> dict:
    """Code every utterance (and rate globals) of the units in place; return the LLM usage."""
    from . import llm, prompts

    parts = prompts.parts(cfg["prompt_version"])
    version = prompts.name(cfg["prompt_version"])
    cache = _cache_path(p)
    common = dict(llm_params=p.llm, cache_path=cache, retries=cfg["parse_retries"])
    reqs, slots = {}, []  # identical prompts (same reply, same context) are asked once
    for u in units:
        for ut in u["utterances"]:
            ctx = ut["context"][-cfg["context_turns"]:] if cfg["context_turns"] else []
            text = prompts.render(parts["code"], context=render_turns(ctx) or "(none)",
                                  utterance=u["turns"][ut["turn"]]["text"].strip())
            k = f"{version}:code:{_key(text)}"
            system = [{"role": "system", "content": parts["code_system"]}] if "code_system" in parts else []
            msgs = [*system, *prompts.shots(parts, "code_"), {"role": "user", "content": text}]
            reqs[k] = llm.Request(k, msgs)
            slots.append((ut, k))
    # truncated_ok: a code word followed by a small model's run-on is still that code (parse_code)
    results = llm.complete(ep, list(reqs.values()), desc="MITI codes", validate=parse_code, truncated_ok=True,
                           settings={"temperature": cfg["temperature"], "max_tokens": cfg["max_tokens"]},
                           **common)
    by_key = {r.key: r for r in results}
    for ut, k in slots:
        r = by_key[k]
        ut.update(code=r.parsed if r.ok else None, ok=r.ok, error=r.error, raw=r.raw)
    g_results = []
    if rate_globals:
        g_reqs = {}
        for u in units:
            text = prompts.render(parts["globals"], transcript=render_turns(u["turns"]))
            u["globals_key"] = f"{version}:globals:{_key(text)}"
            g_reqs[u["globals_key"]] = llm.Request(u["globals_key"], [{"role": "user", "content": text}])
        g_results = llm.complete(ep, list(g_reqs.values()), desc="MITI globals", validate=parse_globals,
                                 settings={"temperature": cfg["temperature"],
                                           "max_tokens": cfg["globals_max_tokens"]}, **common)
        g_by_key = {r.key: r for r in g_results}
        for u in units:
            r = g_by_key[u.pop("globals_key")]
            u.update(globals=r.parsed if r.ok else None, globals_ok=r.ok, globals_error=r.error,
                     globals_raw=r.raw)
    return llm.usage(results + g_results, p.llm, ep.model)


def _cache_path(p) -> Path:
    from .params import path

    return path(p.llm.cache_path) if p.llm.cache_path else p.run_dir / "llm_cache.sqlite"


# ----------------------------------------------------------------------------- tables
def dialogue_table(units: list[dict]) -> pd.DataFrame:
    """One row per coded unit: counts per code, globals, summary scores."""
    rows = []
    for u in units:
        codes = [ut.get("code") for ut in u["utterances"]]
        counts = count_codes(codes)
        g = u.get("globals") or {}
        rows.append({"model": u["model"], "variant": u["variant"], "dialogue_id": u["dialogue_id"],
                     "topic": u.get("topic"), "n_utterances": len(codes),
                     "n_coded": sum(c is not None for c in codes), **counts,
                     **{k: g.get(k, math.nan) for k in GLOBALS}, **summary_scores(counts, g)})
    return pd.DataFrame(rows)


def group_summary(per_dialogue: pd.DataFrame, group: str) -> pd.DataFrame:
    """Summary per (model, variant): counts pooled over dialogues, globals averaged over rated ones."""
    rows = []
    for (model, variant), d in per_dialogue.groupby(["model", "variant"], sort=False):
        counts = {k: d[k].sum(min_count=1) for k in CODES}  # all-NaN (not annotated) stays NaN
        glob = {k: d[k].mean() for k in GLOBALS}  # NaN ratings (missing) are skipped
        n_utt, n_coded = int(d["n_utterances"].sum()), int(d["n_coded"].sum())
        rows.append({"group": group, "model": model, "variant": variant,
                     **summary_scores(counts, glob), "n_dialogues": len(d), "n_utterances": n_utt,
                     "n_coded": n_coded, "pass_rate": _div(n_coded, n_utt),
                     "n_rated": int(d[list(GLOBALS)].notna().all(axis=1).sum()), **counts, **glob})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ----------------------------------------------------------------------------- AnnoMI reference
# AnnoMI's therapist annotations mapped to MITI codes. Reflections (simple/complex), questions
# (open and closed alike, as in MITI's Question) and information map one to one. AnnoMI's advice
# does not say whether permission was asked (Persuade vs Persuade with Permission); negotiation and
# options have no MITI counterpart; AnnoMI does not annotate affirm, seeking collaboration,
# autonomy or confront. Those counts are therefore NaN (not annotated), so are both MI-adherence
# counts; AnnoMI has no global ratings, so technical and relational are NaN for it. Utterances
# coded by several annotators carry the loader's majority codes (mi_llm.corpora).
ANNOMI_CODES = ("SR", "CR", "Q", "GI")  # the MITI counts AnnoMI's annotations give
# comparison labels (coder check): AnnoMI's label, and what each coder answer compares as
ADVICE, OTHER = "ADVICE", "OTHER"
CODER_LABEL = {**{k: k for k in ANNOMI_CODES}, "PERSUADE": ADVICE, "PERSUADE_PERM": ADVICE,
               "AF": OTHER, "SEEK": OTHER, "AUTO": OTHER, "CONFRONT": OTHER, NONE: OTHER}


def annomi_label(main: str, reflection: str, therapist_input: str) -> str | None:
    """Comparison label of one AnnoMI therapist annotation (None: no MITI counterpart)."""
    if main == "reflection":
        return {"simple": "SR", "complex": "CR"}.get(reflection)
    if main == "question":
        return "Q"
    if main == "therapist_input":
        return {"information": "GI", "advice": ADVICE}.get(therapist_input)
    return OTHER if main == "other" else None


def read_annomi(path) -> pd.DataFrame:
    """AnnoMI (mi_llm.corpora's loader) as one row per utterance with its comparison label.

    Columns: transcript_id, mi_quality, utterance_id, interlocutor (therapist | client),
    utterance_text, label (therapists only; None where AnnoMI's code has no MITI counterpart).
    """
    from . import corpora

    rows = []
    for d in corpora.load("annomi", Path(path)):
        for i, t in enumerate(d.turns):
            a = t.annotations
            lab = annomi_label(a.get("main_therapist_behaviour"), a.get("reflection_subtype"),
                               a.get("therapist_input_subtype")) if t.speaker == "counselor" else None
            rows.append({"transcript_id": int(d.id), "mi_quality": d.meta["mi_quality"],
                         "utterance_id": i, "interlocutor": "therapist" if t.speaker == "counselor"
                         else "client", "utterance_text": t.text, "label": lab})
    return pd.DataFrame(rows)


def annomi_reference(annomi: pd.DataFrame) -> pd.DataFrame:
    """MITI summary scores of AnnoMI's high- and low-quality sessions from the human annotations."""
    th = annomi[annomi["interlocutor"] == "therapist"]
    rows = []
    for (tid, quality), d in th.groupby(["transcript_id", "mi_quality"]):
        counts = {k: (d["label"] == k).sum() if k in ANNOMI_CODES else math.nan for k in CODES}
        rows.append({"model": "annomi", "variant": quality, "dialogue_id": str(tid), "topic": None,
                     "n_utterances": len(d), "n_coded": int(d["label"].notna().sum()), **counts,
                     **{k: math.nan for k in GLOBALS}})
    per = pd.DataFrame(rows).sort_values("variant")  # high before low
    return group_summary(per, group="reference")


def annomi_sample(annomi: pd.DataFrame, n: int, seed: int, context_turns: int) -> list[dict]:
    """Units for the coder check: n therapist utterances, stratified by label, each with context."""
    if n <= 0:
        return []
    th = annomi[(annomi["interlocutor"] == "therapist") & annomi["label"].notna()]
    rng = np.random.default_rng(seed)
    by_label = {lab: d.iloc[rng.permutation(len(d))] for lab, d in th.groupby("label")}
    picked, i = [], 0
    while len(picked) < n and any(i < len(d) for d in by_label.values()):  # round-robin over labels
        picked += [d.iloc[i] for d in by_label.values() if i < len(d)][: n - len(picked)]
        i += 1
    sessions = {tid: d for tid, d in annomi.groupby("transcript_id")}
    units = []
    for row in picked:
        s = sessions[row["transcript_id"]]
        before = s[s["utterance_id"] < row["utterance_id"]].tail(context_turns)
        ctx = [{"speaker": "counselor" if w == "therapist" else "client", "text": t}
               for w, t in zip(before["interlocutor"], before["utterance_text"])]
        units.append({"model": "annomi", "variant": row["mi_quality"],
                      "dialogue_id": f"{row['transcript_id']}:{row['utterance_id']}", "topic": None,
                      "turns": ctx + [{"speaker": "counselor", "text": row["utterance_text"]}],
                      "utterances": [{"turn": len(ctx), "context": ctx, "reference": row["label"]}]})
    return units


def coder_check(units: list[dict]) -> dict:
    """Agreement of the automatic coder with AnnoMI's labels on the coded sample (kappa, accuracy)."""
    from .worksheets import cohen_kappa

    pairs = [(ut["reference"], CODER_LABEL[ut["code"]]) for u in units for ut in u["utterances"]
             if ut.get("code") is not None]
    n = sum(len(u["utterances"]) for u in units)
    ref, auto = [a for a, _ in pairs], [b for _, b in pairs]
    return {"comparison": "auto_vs_annomi", "n_sampled": n, "n_coded": len(pairs),
            "pass_rate": _div(len(pairs), n), "n_compared": len(pairs),
            "accuracy": float(np.mean([a == b for a, b in pairs])) if pairs else math.nan,
            "kappa": cohen_kappa(ref, auto), "labels": " ".join(sorted(set(ref) | set(auto))),
            "n_rated": 0}


# ----------------------------------------------------------------------------- the stage's call
def _write_codes(units: list[dict], file: Path, version: str) -> None:
    from .runs import write_atomic  # a unique temporary file, then a rename

    write_atomic(file, "".join(json.dumps({**u, "prompt_version": version}, ensure_ascii=False) + "\n"
                               for u in units))


def evaluate(p, generations_path, out_dir, endpoint=None) -> dict:
    """Code stage 04's generations and an AnnoMI sample; write miti_codes.jsonl, miti_summary.csv,
    miti_dialogues.csv, coder_agreement.csv and blank worksheets/; return the tables.

    Opens llm.endpoint(p.llm) unless an endpoint is given.
    """
    from . import llm, prompts, worksheets
    from .params import path

    cfg, out_dir = settings(p), Path(out_dir)
    if not cfg["enabled"]:
        return {}
    units = units_from_generations(generations_path, cfg["max_utterances"])
    annomi = read_annomi(path(cfg["annomi_path"]))
    check = annomi_sample(annomi, cfg["annomi_sample"], p.seed, cfg["context_turns"])
    opened = contextlib.nullcontext(endpoint) if endpoint is not None else llm.endpoint(p.llm)
    with opened as ep:
        usage = code_units(ep, units, p, cfg, rate_globals=cfg["rate_globals"])
        usage_check = code_units(ep, check, p, cfg, rate_globals=False) if check else {}
    _write_codes(units + check, out_dir / "miti_codes.jsonl", prompts.name(cfg["prompt_version"]))
    per_dialogue = dialogue_table(units)
    summary = pd.concat([group_summary(per_dialogue, "generated"), annomi_reference(annomi)],
                        ignore_index=True)
    exported = worksheets.export(units, out_dir / "worksheets")
    rows = [coder_check(check)] if check else []
    rows += worksheets.human_agreement(cfg["human_worksheets"], units)
    agreement = pd.DataFrame(rows, columns=worksheets.AGREEMENT_COLUMNS)
    from .runs import atomic_path

    for df, name in ((per_dialogue, "miti_dialogues.csv"), (summary, "miti_summary.csv"),
                     (agreement, "coder_agreement.csv")):
        with atomic_path(out_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    return {"summary": summary, "per_dialogue": per_dialogue, "agreement": agreement,
            "usage": {"generations": usage, "annomi_check": usage_check},
            "worksheets": exported}
