"""MITI 4.2.1 coding: vocabulary, summary scores, an LLM coder, and real MI (AnnoMI) as reference.

The automatic coder asks, through the same OpenAI-compatible client as the judge and the
transcriber (mi_llm.llm.api), one request per counselor utterance (the utterance with a few turns of
preceding context; the answer is one code word) and one request per dialogue for the four globals
(a JSON answer). Small models can answer a one-word question; a whole-dialogue JSON of codes they
cannot. Unparseable answers are asked again, then recorded as missing; raw answers are kept.

As in MITI 4.2.1 an utterance is coded with every behaviour it holds: a question and a reflection
both count. An answer is one code, or two behaviours that can co-occur; an answer that names more,
two reflections, offers alternatives ("SR or CR", "SR/CR", "Q?") or corrects itself ("AF: no,
actually SEEK") is missing: counted, never coded.

Counts are pooled over a group's dialogues before the ratios are taken (%CR, R:Q, %MI-adherent),
so groups of short dialogues are not dominated by the many dialogues whose own ratio is undefined;
counts that grow with the number of utterances (MI-adherent, MI-non-adherent) are reported per
coded utterance; globals are the mean of the dialogues' ratings. Beside every score: n coded and
n missing. A ratio with a zero denominator is NaN, never 0 or infinity.
Worksheets for human coders and agreement statistics are in mi_llm.eval.worksheets; stage 04 codes its
generations and writes the MITI artifacts through mi_llm.eval.writer.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd

from mi_llm.data.schema import SPEAKER_OF, jsonl_rows
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
SUMMARY_COLUMNS = [
    "group",
    "model",
    "variant",
    *SCORES,
    "n_dialogues",
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
    mia, mina = c["SEEK"] + c["AF"] + c["AUTO"], c["PERSUADE"] + c["CONFRONT"]
    out = {
        "technical": (g["CCT"] + g["SST"]) / 2,
        "relational": (g["PARTNER"] + g["EMPATHY"]) / 2,
        "pct_cr": 100 * _div(c["CR"], c["SR"] + c["CR"]),
        "r_q": _div(c["SR"] + c["CR"], c["Q"]),
        "pct_mi_adherent": 100 * _div(mia, mia + mina),
        "mi_adherent": _div(mia, n_coded),
        "mi_non_adherent": _div(mina, n_coded),
    }
    out.update({f"{s}_label": label(s, out[s]) for s in THRESHOLDS})
    return out


def count_codes(codes) -> dict:
    """Utterances holding each behaviour, from one code set per utterance (None: missing)."""
    return {k: sum(c is not None and k in c for c in codes) for k in CODES}


def code_label(codes) -> str | None:
    """One utterance's code set as one label: 'NONE', 'SR', 'Q+CR' (CODES order); None: missing."""
    if codes is None:
        return None
    return "+".join(k for k in CODES if k in codes) or NONE


# ----------------------------------------------------------------------------- parsing answers
_CODE_WORD = (
    r"(?<![A-Za-z_])(?:PERSUADE_PERM|PERSUADE|CONFRONT|SEEK|AUTO|NONE|GI|SR|CR|AF|Q)(?![A-Za-z_])"
)
_LEADING_CODES = re.compile(rf"{_CODE_WORD}(?:\s*(?:[,，+&、]|\band\b)\s*{_CODE_WORD})*")
# alternatives, doubt or a correction anywhere in the answer: not one coding
_HEDGE = re.compile(
    r"\bor\b|/|\?|？|\b(?:actually|instead|maybe|perhaps|either|wait|no)\b|"
    r"或|还是|也许|不是|应该是",
    re.IGNORECASE,
)
_EXCLUSIVE = [{"SR", "CR"}, {"PERSUADE", "PERSUADE_PERM"}]  # one utterance, one of each pair
MAX_CODES = 3  # e.g. a reflection, a question and information; more is an echoed list


def parse_code(text: str) -> tuple[str, ...]:
    """The behaviours a coder answered, in CODES order (() for NONE); ValueError when the answer
    is not one coding: unknown words, more than MAX_CODES codes, two reflections, NONE with a
    code, alternatives or a self-correction."""
    s = (text or "").strip()
    if s.startswith(("{", "```")):
        obj = _json_object(s)
        if set(obj) not in ({"code"}, {"codes"}):
            raise ValueError(
                f"JSON answer must have the one key 'code' or 'codes', got {sorted(obj)}"
            )
        v = obj.get("code", obj.get("codes"))
        s = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
    if _HEDGE.search(s):
        raise ValueError(f"not one coding (alternatives or a correction): {s[:60]!r}")
    line = next((ln for ln in s.splitlines() if ln.strip()), "")
    line = line.strip().strip("`*\"'“”「」.。 ")
    norm = re.sub(r"\W+", "_", line).strip("_").upper()
    if norm in CODES or norm == NONE:
        return code_set([norm], line)
    if norm in _NAMES:
        return (_NAMES[norm],)
    m = _LEADING_CODES.match(line)
    if not m:
        raise ValueError(f"not a MITI code: {line[:60]!r}")
    rest = line[m.end() :]
    if re.search(_CODE_WORD, rest):  # "SR - CR", "Q then GI": more codes after the list
        raise ValueError(f"more codes after the answer's codes: {line[:60]!r}")
    # "SR - the counselor ..." and "CRспекти…": the codes, then words that are not codes
    return code_set(re.findall(_CODE_WORD, m.group(0)), line)


def code_set(codes: list[str], line: str = "") -> tuple[str, ...]:
    """The codes as one utterance's set in CODES order; ValueError when no utterance holds them."""
    got = set(codes)
    if len(got) > MAX_CODES or any(pair <= got for pair in _EXCLUSIVE):
        raise ValueError(f"more codes than one utterance holds: {line[:60]!r}")
    if NONE in got and len(got) > 1:
        raise ValueError(f"NONE together with codes: {line[:60]!r}")
    return tuple(k for k in CODES if k in got)


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
# "text"}], "utterances": [{"turn": index into turns, "round", "context": [{"speaker", "text"}]}]}.
_SPEAKER = SPEAKER_OF


def units_from_generations(path, max_utterances: int | None = None) -> list[dict]:
    """Group generations.jsonl by (model, variant, dialogue_id) into units, rounds in order.

    A unit's transcript is, per round, the client's last turn and the generated reply; each reply
    is coded with the gold history it was generated from as its context.
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
            unit["turns"].append({"speaker": "counselor", "text": r["reply"]})
            unit["utterances"].append(
                {"turn": len(unit["turns"]) - 1, "round": r["round"], "context": context}
            )
        units.append(unit)
    return units


def render_turns(turns: list[dict]) -> str:
    """A transcript, one 'Client: ...' / 'Counselor: ...' line per turn."""
    return "\n".join(f"{t['speaker'].capitalize()}: {t['text'].strip()}" for t in turns)


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
    """One row per coded unit: utterances holding each code, globals, summary scores."""
    rows = []
    for u in units:
        codes = [ut.get("codes") for ut in u["utterances"]]
        counts = count_codes(codes)
        n_coded = sum(c is not None for c in codes)
        g = u.get("globals") or {}
        rows.append(
            {
                "model": u["model"],
                "variant": u["variant"],
                "dialogue_id": u["dialogue_id"],
                "topic": u.get("topic"),
                "n_utterances": len(codes),
                "n_coded": n_coded,
                "n_missing": len(codes) - n_coded,
                **counts,
                **{k: g.get(k, math.nan) for k in GLOBALS},
                **summary_scores(counts, g, n_coded),
            }
        )
    return pd.DataFrame(rows)


def group_summary(per_dialogue: pd.DataFrame, group: str) -> pd.DataFrame:
    """Summary per (model, variant): counts pooled over dialogues, globals averaged over rated ones."""
    rows = []
    for (model, variant), d in per_dialogue.groupby(["model", "variant"], sort=False):
        counts = {k: d[k].sum(min_count=1) for k in CODES}  # all-NaN (not annotated) stays NaN
        glob = {k: d[k].mean() for k in GLOBALS}  # NaN ratings (missing) are skipped
        n_utt, n_coded = int(d["n_utterances"].sum()), int(d["n_coded"].sum())
        n_rated = int(d[list(GLOBALS)].notna().all(axis=1).sum())
        rows.append(
            {
                "group": group,
                "model": model,
                "variant": variant,
                **summary_scores(counts, glob, n_coded),
                "n_dialogues": len(d),
                "n_utterances": n_utt,
                "n_coded": n_coded,
                "n_missing": n_utt - n_coded,
                "pass_rate": _div(n_coded, n_utt),
                "n_rated": n_rated,
                "n_unrated": len(d) - n_rated,
                **counts,
                **glob,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


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
