"""MITI 4.2.1 coding: vocabulary, summary scores, an LLM coder, and real MI (AnnoMI) as reference.

The coding unit is the utterance, as in MITI 4.2.1: each generated reply is cut into utterances
(one complete thought each; mi_llm.eval.segment's sentence and clause rules) and each utterance is
coded with exactly one behaviour code, or NONE. The automatic coder asks, through the same
OpenAI-compatible client as the judge and the transcriber (mi_llm.llm.api), one request per
utterance (the utterance with a few turns of preceding context and the reply's utterances before
it; the answer is one code word) and one request per dialogue for the four globals (a JSON answer).
An answer that is not one code is asked again, then recorded as missing (counted, never coded); raw
answers are kept. Missing: two codes ("CR, Q"), a code word on a later line ("Q\nCR"), an echoed
list, alternatives ("SR or CR", "SR/CR", "Q?") or a self-correction ("AF: no, actually SEEK").

Behaviours are counted over utterances. The reply is a derived view only (reply_codes: the codes
of a reply's utterances). Summary scores (mi_llm.eval.miti_summary) come in two definitions, each
labelled: pooled (counts summed over a group's dialogues, then the ratio) and per conversation (the
ratio per dialogue, then the mean over dialogues where it is defined), each with a 95% CI from
resampling dialogues. A ratio with a zero denominator is NaN, never 0 or infinity.
Worksheets for human coders and agreement statistics are in mi_llm.eval.worksheets; stage 04 codes its
generations and writes the MITI artifacts through mi_llm.eval.writer.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mi_llm.data.schema import SPEAKER_OF, jsonl_rows
from mi_llm.eval.segment import segment
from mi_llm.llm import cache as answer_cache
from mi_llm.params import MitiParams

# ----------------------------------------------------------------------------- vocabulary
CODES = {  # MITI 4.2.1 behaviour codes: short code -> name
    "GI": "Giving Information",
    "PERSUADE": "Persuade",
    "PERSUADE_PERM": "Persuade with Permission",
    "Q": "Question",
    "SR": "Simple Reflection",
    "CR": "Complex Reflection",
    "AF": "Affirm",
    "SEEK": "Seeking Collaboration",
    "AUTO": "Emphasizing Autonomy",
    "CONFRONT": "Confront",
}
NONE = "NONE"  # a coded utterance with none of the behaviours (None means: not coded / missing)
GLOBALS = {  # MITI 4.2.1 global ratings, integers 1..5
    "CCT": "Cultivating Change Talk",
    "SST": "Softening Sustain Talk",
    "PARTNER": "Partnership",
    "EMPATHY": "Empathy",
}
GLOBAL_MIN, GLOBAL_MAX = 1, 5
THRESHOLDS = {  # (fair, good) of MITI 4.2.1; pct_cr in percent
    "relational": (3.5, 4.0),
    "technical": (3.0, 4.0),
    "pct_cr": (40.0, 50.0),
    "r_q": (1.0, 2.0),
}
# mi_adherent / mi_non_adherent: per coded utterance; pct_mi_adherent = 100 MIA / (MIA + MINA)
SCORES = [
    "technical",
    "relational",
    "pct_cr",
    "r_q",
    "pct_mi_adherent",
    "mi_adherent",
    "mi_non_adherent",
]
DEFINITIONS = {  # summary_definition -> what its scores are
    "pooled": "counts summed over the dialogues, then the ratio",
    "per_conversation": "the ratio per dialogue, then the mean over dialogues where it is defined",
}
SUMMARY_COLUMNS = [
    "group",
    "model",
    "variant",
    "definition",
    *SCORES,
    *(f"{s}_{end}" for s in SCORES for end in ("ci_low", "ci_high")),
    "n_dialogues",
    "too_small",  # n_dialogues < metrics.MIN_DIALOGUES: CIs too small to read
    "n_replies",
    "n_utterances",
    "n_coded",
    "n_missing",
    "pass_rate",
    "n_rated",
    "n_unrated",
    *(f"{s}_label" for s in THRESHOLDS),
    *CODES,
    *GLOBALS,
]
_NAMES = {
    re.sub(r"\W+", "_", v).upper(): k for k, v in CODES.items()
}  # "SIMPLE_REFLECTION" -> "SR"


# ----------------------------------------------------------------------------- summary scores
def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan  # 0/0 and x/0 are undefined: NaN


def _divide(a, b):
    """a / b elementwise for floats or arrays; NaN where b is 0 or NaN (0/0 and x/0 are undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(all="ignore"):
        return np.where((b == 0) | np.isnan(b), np.nan, a / np.where(b == 0, 1, b))


def formulas(c: dict, g: dict, n) -> dict:
    """MITI 4.2.1's summary scores from behaviour counts `c`, globals `g` and coded utterances `n`,
    each a float or an array (one entry per row): see summary_scores for the formulas."""
    mia, mina = c["SEEK"] + c["AF"] + c["AUTO"], c["PERSUADE"] + c["CONFRONT"]
    return {
        "technical": (g["CCT"] + g["SST"]) / 2,
        "relational": (g["PARTNER"] + g["EMPATHY"]) / 2,
        "pct_cr": 100 * _divide(c["CR"], c["SR"] + c["CR"]),
        "r_q": _divide(c["SR"] + c["CR"], c["Q"]),
        "pct_mi_adherent": 100 * _divide(mia, mia + mina),
        "mi_adherent": _divide(mia, n),
        "mi_non_adherent": _divide(mina, n),
    }


def label(score: str, value: float) -> str:
    """'below fair' | 'fair' | 'good' against the MITI 4.2.1 thresholds; 'n/a' for NaN."""
    fair, good = THRESHOLDS[score]
    if value is None or math.isnan(value):
        return "n/a"
    return "good" if value >= good else "fair" if value >= fair else "below fair"


def summary_scores(counts: dict, globals_: dict | None = None, n_coded: float = math.nan) -> dict:
    """MITI summary scores from behaviour counts (missing code: 0, NaN: not annotated) and globals.

    technical = (CCT+SST)/2, relational = (PARTNER+EMPATHY)/2, pct_cr = 100*CR/(SR+CR),
    r_q = (SR+CR)/Q, MIA = SEEK+AF+AUTO, MINA = PERSUADE+CONFRONT, pct_mi_adherent =
    100*MIA/(MIA+MINA); mi_adherent = MIA/n_coded and mi_non_adherent = MINA/n_coded (per
    coded utterance, so that they do not grow with the number of utterances).
    """
    c = {k: float(counts.get(k, 0)) for k in CODES}
    g = {k: float((globals_ or {}).get(k, math.nan)) for k in GLOBALS}
    out = {k: float(v) for k, v in formulas(c, g, n_coded).items()}
    out.update({f"{s}_label": label(s, out[s]) for s in THRESHOLDS})
    return out


def count_codes(codes) -> dict:
    """Utterances coded with each behaviour, from one code tuple per utterance (None: missing)."""
    return {k: sum(c is not None and k in c for c in codes) for k in CODES}


def code_label(codes) -> str | None:
    """Codes as one label: 'NONE', 'SR', or a reply's 'Q+CR' (CODES order); None: missing."""
    if codes is None:
        return None
    return "+".join(k for k in CODES if k in codes) or NONE


# ----------------------------------------------------------------------------- parsing answers
_CODE_WORD = (
    r"(?<![A-Za-z_])(?:PERSUADE_PERM|PERSUADE|CONFRONT|SEEK|AUTO|NONE|GI|SR|CR|AF|Q)(?![A-Za-z_])"
)
# alternatives, doubt or a correction anywhere in the answer: not one coding
_HEDGE = re.compile(
    r"\bor\b|/|\?|？|\b(?:actually|instead|maybe|perhaps|either|wait|no)\b|"
    r"或|还是|也许|不是|应该是",
    re.IGNORECASE,
)


def parse_code(text: str) -> tuple[str, ...]:
    """The one behaviour a coder answered for an utterance: (code,), or () for NONE.

    ValueError when the answer is not one code: an unknown word, two codes ("CR, Q"), a code word
    on any line after the first ("Q\nCR", an echoed list), alternatives or a self-correction.
    Words after the code on its line that are not codes ("SR - the counselor ...") are allowed.
    """
    s = (text or "").strip()
    if s.startswith(("{", "```")):
        obj = _json_object(s)
        if set(obj) != {"code"} or not isinstance(obj["code"], str):
            raise ValueError(f"JSON answer must be {{'code': '<one code>'}}, got {obj!r}"[:120])
        s = obj["code"]
    if _HEDGE.search(s):
        raise ValueError(f"not one coding (alternatives or a correction): {s[:60]!r}")
    lines = [ln for ln in s.splitlines() if ln.strip()]
    line = (lines[0] if lines else "").strip().strip("`*\"'“”「」.。 ")
    later = "\n".join(lines[1:])
    if re.search(_CODE_WORD, later) or any(n in re.sub(r"\W+", "_", later).upper() for n in _NAMES):
        raise ValueError(f"a code word after the first line: {s[:60]!r}")
    norm = re.sub(r"\W+", "_", line).strip("_").upper()
    if norm in CODES or norm == NONE:
        return code_set([norm], line)
    if norm in _NAMES:
        return (_NAMES[norm],)
    m = re.match(_CODE_WORD, line)
    if not m:
        raise ValueError(f"not a MITI code: {line[:60]!r}")
    if re.search(_CODE_WORD, line[m.end() :]):  # "SR, CR", "SR - CR", "Q then GI"
        raise ValueError(f"more than one code for one utterance: {line[:60]!r}")
    return code_set([m.group(0)], line)  # "CRспекти…": the code, then words that are not codes


def code_set(codes: list[str], line: str = "") -> tuple[str, ...]:
    """One utterance's codes as a tuple: (code,) or () for NONE; ValueError for more than one."""
    got = list(dict.fromkeys(codes))
    if len(got) > 1:
        raise ValueError(f"more than one code for one utterance: {line[:60] or got!r}")
    return tuple(k for k in got if k != NONE)


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
        raise ValueError("the JSON answer is not an object")  # noqa: TRY004 (validators raise ValueError)
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
# "text"}], "utterances": [{"turn": index into turns, "round", "segment", "context": [{"speaker",
# "text"}]}]}. A reply's utterances are consecutive counselor turns, one per utterance.
_SPEAKER = SPEAKER_OF


def units_from_generations(path, max_utterances: int | None = None) -> list[dict]:
    """Group generations.jsonl by (model, variant, dialogue_id) into units, rounds in order.

    A unit's transcript is, per round, the client's last turn and the generated reply cut into its
    utterances (mi_llm.eval.segment); each utterance is coded with the gold history the reply was
    generated from, and the reply's utterances before it, as its context. max_utterances: the
    replies (rounds) coded per dialogue, None for all.
    """
    groups: dict[tuple, list] = {}
    required = ("model", "variant", "dialogue_id", "round", "messages", "reply")
    for _, r in jsonl_rows(path, required):
        groups.setdefault((r["model"], r["variant"], str(r["dialogue_id"])), []).append(r)
    units = []
    for (model, variant, did), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["round"])[:max_utterances]
        unit = {
            "model": model,
            "variant": variant,
            "dialogue_id": did,
            "topic": recs[0].get("topic"),
            "turns": [],
            "utterances": [],
        }
        for r in recs:
            context = [
                {"speaker": _SPEAKER[m["role"]], "text": m["content"]}
                for m in r["messages"]
                if m["role"] in _SPEAKER
            ]
            if context and context[-1]["speaker"] == "client":
                unit["turns"].append(context[-1])
            add_reply(unit, r["reply"], context, round_=r["round"])
        units.append(unit)
    return units


def add_reply(unit: dict, reply: str, context: list[dict], **fields) -> None:
    """Append a counselor reply to a unit as its utterances (one turn and one utterance each);
    a reply with no utterance at all ("", "……") is one empty utterance, so it is still counted."""
    segments = segment(reply) or [reply.strip()]
    for j, text in enumerate(segments):
        unit["turns"].append({"speaker": "counselor", "text": text})
        before = [{"speaker": "counselor", "text": " ".join(segments[:j])}] if j else []
        unit["utterances"].append(
            {
                "turn": len(unit["turns"]) - 1,
                **{k.rstrip("_"): v for k, v in fields.items()},
                "segment": j,
                "context": context + before,
            }
        )


def reply_codes(unit: dict) -> list[dict]:
    """The derived per-reply view of a coded unit: per round, its utterances' codes in order and
    their label ('Q+CR'; None when an utterance is missing)."""
    rounds: dict = {}
    for ut in unit["utterances"]:
        rounds.setdefault(ut.get("round"), []).append(ut.get("codes"))
    return [
        {
            "round": r,
            "n_utterances": len(cs),
            "codes": cs,
            "label": None if any(c is None for c in cs) else code_label(sum(map(tuple, cs), ())),
        }
        for r, cs in rounds.items()
    ]


def render_turns(turns: list[dict]) -> str:
    """A transcript, one 'Client: ...' / 'Counselor: ...' line per turn; a speaker's consecutive
    turns (a reply's utterances) are one line."""
    merged: list[list] = []
    for t in turns:
        if merged and merged[-1][0] == t["speaker"]:
            merged[-1][1] += " " + t["text"].strip()
        else:
            merged.append([t["speaker"], t["text"].strip()])
    return "\n".join(f"{who.capitalize()}: {text}" for who, text in merged)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:20]


def code_units(ep, units: list[dict], P, cfg: MitiParams, rate_globals: bool = True) -> dict:
    """Code every utterance (and rate globals) of the units in place; return the LLM usage.

    cfg: the validated coder settings (P.evaluation.miti).
    """
    from mi_llm.llm import api, prompts

    parts = prompts.parts(cfg.prompt_version)
    version = prompts.name(cfg.prompt_version)
    cache = answer_cache.cache_path(P)
    common = {"llm_params": P.llm, "cache_path": cache, "retries": cfg.parse_retries}
    reqs, slots = {}, []  # identical prompts (same reply, same context) are asked once
    for u in units:
        for ut in u["utterances"]:
            ctx = ut["context"][-cfg.context_turns :] if cfg.context_turns else []
            text = prompts.render(
                parts["code"],
                context=render_turns(ctx) or "(none)",
                utterance=u["turns"][ut["turn"]]["text"].strip(),
            )
            k = f"{version}:code:{_key(text)}"
            system = (
                [{"role": "system", "content": parts["code_system"]}]
                if "code_system" in parts
                else []
            )
            msgs = [*system, *prompts.shots(parts, "code_"), {"role": "user", "content": text}]
            reqs[k] = api.Request(k, msgs)
            slots.append((ut, k))
    # truncated_ok: a code word followed by a small model's run-on is still that code (parse_code)
    results = api.complete(
        ep,
        list(reqs.values()),
        desc="MITI codes",
        validate=parse_code,
        truncated_ok=True,
        settings={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens},
        **common,
    )
    by_key = {r.key: r for r in results}
    for ut, k in slots:
        r = by_key[k]
        ut.update(codes=list(r.parsed) if r.ok else None, ok=r.ok, error=r.error, raw=r.raw)
    g_results = []
    if rate_globals:
        g_reqs = {}
        for u in units:
            text = prompts.render(parts["globals"], transcript=render_turns(u["turns"]))
            u["globals_key"] = f"{version}:globals:{_key(text)}"
            g_reqs[u["globals_key"]] = api.Request(
                u["globals_key"], [{"role": "user", "content": text}]
            )
        g_results = api.complete(
            ep,
            list(g_reqs.values()),
            desc="MITI globals",
            validate=parse_globals,
            settings={"temperature": cfg.temperature, "max_tokens": cfg.globals_max_tokens},
            **common,
        )
        g_by_key = {r.key: r for r in g_results}
        for u in units:
            r = g_by_key[u.pop("globals_key")]
            u.update(
                globals=r.parsed if r.ok else None,
                globals_ok=r.ok,
                globals_error=r.error,
                globals_raw=r.raw,
            )
    return api.usage(results + g_results, P.llm, ep.model)


# ----------------------------------------------------------------------------- tables
def dialogue_table(units: list[dict]) -> pd.DataFrame:
    """One row per coded unit: replies, utterances coded with each code, globals, summary scores."""
    rows = []
    for u in units:
        codes = [ut.get("codes") for ut in u["utterances"]]
        counts = count_codes(codes)
        n_coded = sum(c is not None for c in codes)
        g = u.get("globals") or {}
        rounds = {(ut.get("round"), ut["turn"] - ut.get("segment", 0)) for ut in u["utterances"]}
        rows.append(
            {
                "model": u["model"],
                "variant": u["variant"],
                "dialogue_id": u["dialogue_id"],
                "topic": u.get("topic"),
                "n_replies": len(rounds),
                "n_utterances": len(codes),
                "n_coded": n_coded,
                "n_missing": len(codes) - n_coded,
                **counts,
                **{k: g.get(k, math.nan) for k in GLOBALS},
                **summary_scores(counts, g, n_coded),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- artifacts
def write_codes(units: list[dict], file: Path, version: str) -> None:
    """Coded units, one JSON line each with the prompt version that coded them."""
    from mi_llm.runs import write_atomic  # a unique temporary file, then a rename

    write_atomic(
        file,
        "".join(
            json.dumps({**u, "prompt_version": version}, ensure_ascii=False) + "\n" for u in units
        ),
    )
