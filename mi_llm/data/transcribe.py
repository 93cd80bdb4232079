"""Stage 02: rewrite the selected corpora's dialogues into MI-style dialogues, validate, split.

Two units of rewriting, same client, cache and validation machinery:
- `dialogue` (GPT-4 class models): the whole dialogue in one answer, lines 来访者：/咨询师：.
- `turn` (small models): each counselor turn rewritten alone, in context (source turns before it and
  the client's next turn), few-shot; the dialogue is reassembled from its rewritten turns and fails,
  with the reason, if any of its turns fails. A source turn is never passed off as a rewrite.
With `tag_behaviour` every counselor turn must start with its MI behaviour tag (<mi:label>, see
mi_llm.eval.forecast); the tag is checked and kept in the stored content, so SFT learns it unchanged.
Nothing invented, nothing lost: a whole-dialogue rewrite keeps the source's turn structure and its
client turns (equal after whitespace/punctuation normalisation, within
transcription.client_edit_tolerance, with no negation, sentence type or number changed), and the
records store the source's client turns, never the model's copy; a counselor turn holding a speaker
label or a whole client sentence is refused (mi_llm.data.transcript); a stage whose dialogues failed on transport errors above
llm.max_transport_failures fails, so that a re-run resumes it from the answer cache.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from mi_llm import runs, stages
from mi_llm.data import schema, transcript
from mi_llm.data.schema import ROLE_OF, DataError, Dialogue, Turn
from mi_llm.llm import api, prompts
from mi_llm.params import path as project_path

# report.json keys later stages read: the valid dialogues, and the failed ones as {reason: count}
REPORT_VALID = "valid"
REPORT_FAILED = "failed_by_reason"


# ----------------------------------------------------------------------------- inputs
def selected_corpora(quality_csv) -> list[str]:
    """Corpora marked `selected` in stage 01's quality.csv, best rank first."""
    df = pd.read_csv(quality_csv)
    for col in ("corpus", "selected"):
        if col not in df.columns:
            raise DataError(quality_csv, "header", col, "column missing")
    sel = df[df["selected"].astype(str).str.lower().isin(["true", "1"])]
    if "rank" in sel.columns:
        sel = sel.sort_values("rank")
    if sel.empty:
        raise DataError(quality_csv, "all", "selected", "no corpus is selected")
    return list(sel["corpus"])


def trim(d: Dialogue, max_turns: int | None) -> Dialogue | None:
    """The first max_turns turns, ending on a counselor turn (None when no counselor turn is left)."""
    turns = d.turns[:max_turns] if max_turns else list(d.turns)
    while turns and turns[-1].speaker != "counselor":
        turns.pop()
    if not turns:
        return None
    return Dialogue(d.id, d.corpus, turns, d.meta, d.source)


def load_sources(P, corpora: list[str]) -> list[Dialogue]:
    """Dialogues of the selected corpora (params paths), max_dialogues per corpus, trimmed."""
    from mi_llm.data import corpora as corpora_mod

    tp, out = P.transcription, []
    for name in corpora:
        if name not in P.corpora.sources:
            raise ValueError(f"corpus {name!r} is selected but corpora.sources has no path for it")
        ds = corpora_mod.load(
            name, project_path(P.corpora.sources[name]), on_error=P.corpora.on_error
        )
        kept = [t for t in (trim(d, tp.max_turns) for d in ds) if t is not None]
        out += kept[: tp.max_dialogues] if tp.max_dialogues else kept
    return out


def sources_table(dialogues: list[Dialogue]) -> pd.DataFrame:
    """Per corpus: dialogues to rewrite, their turns and counselor turns (the units of `turn` mode)."""
    rows = [
        {
            "corpus": d.corpus,
            "turns": len(d.turns),
            "counselor_turns": sum(t.speaker == "counselor" for t in d.turns),
            "chars": sum(len(t.text) for t in d.turns),
        }
        for d in dialogues
    ]
    df = pd.DataFrame(rows, columns=["corpus", "turns", "counselor_turns", "chars"])
    return df.groupby("corpus").agg(
        dialogues=("turns", "size"),
        turns=("turns", "sum"),
        counselor_turns=("counselor_turns", "sum"),
        chars=("chars", "sum"),
    )


def check_prompt(parts: dict, version: str, tp) -> None:
    """The prompt asks for <mi:...> tags exactly when transcription.tag_behaviour is on."""
    asks = "<mi:" in parts.get("system", "")
    if asks != bool(tp.tag_behaviour):
        raise ValueError(
            f"transcription.prompt_version {version!r} {'asks' if asks else 'does not ask'} for "
            f"<mi:behaviour> tags but transcription.tag_behaviour is {tp.tag_behaviour}; use "
            + ("mi_tagged_v1 / mi_turn_tagged_v1" if tp.tag_behaviour else "an untagged version")
        )


# ----------------------------------------------------------------------------- requests
def request_key(version: str, d: Dialogue, turn: int | None = None) -> str:
    """Stable id of one unit: prompt version, dialogue content hash and (turn mode) turn index."""
    base = f"{prompts.name(version)}:{d.corpus}:{d.content_hash()[:16]}"
    return base if turn is None else f"{base}:{turn}"


def dialogue_request(d: Dialogue, parts: dict, version: str) -> api.Request:
    """The whole-dialogue rewrite request."""
    msgs = [
        {"role": "system", "content": parts["system"]},
        {
            "role": "user",
            "content": prompts.render(parts["user"], dialogue=transcript.format_turns(d.turns)),
        },
    ]
    return api.Request(request_key(version, d), msgs)


def turn_requests(d: Dialogue, parts: dict, version: str) -> list[tuple[int, api.Request]]:
    """One few-shot request per counselor turn: source context before it, the client's next turn."""
    shots = []
    for i in range(1, 10):
        if f"shot{i}_user" in parts:
            shots += [
                {"role": "user", "content": parts[f"shot{i}_user"]},
                {"role": "assistant", "content": parts[f"shot{i}_assistant"]},
            ]
    out = []
    for i, t in enumerate(d.turns):
        if t.speaker != "counselor":
            continue
        nxt = next((u.text for u in d.turns[i + 1 :] if u.speaker == "client"), "（对话结束）")
        user = prompts.render(
            parts["user"],
            context=transcript.format_turns(d.turns[:i]) or "（对话开始）",
            source=" ".join(t.text.split()),
            next_client=" ".join(nxt.split()),
        )
        msgs = [
            {"role": "system", "content": parts["system"]},
            *shots,
            {"role": "user", "content": user},
        ]
        out.append((i, api.Request(request_key(version, d, i), msgs)))
    return out


# ----------------------------------------------------------------------------- transcription
def _reason(error: str | None) -> str:
    return (error or "unknown").split(":")[0]


def to_record(d: Dialogue, turns: list[Turn], version: str) -> dict:
    """The MI corpus record of one rewritten dialogue (contract of 02's train/test.jsonl)."""
    return {
        "id": f"{d.corpus}-{d.id}",
        "source_corpus": d.corpus,
        "source_id": str(d.id),
        "prompt_version": prompts.name(version),
        "topic": d.meta.get("topic"),
        "messages": [{"role": ROLE_OF[t.speaker], "content": t.text} for t in turns],
    }


def _by_dialogue(ep, dialogues, P, cache_path, batch_dir):
    """Run the requests of the chosen unit; yield (dialogue, rewritten turns | None, reason, results)."""
    tp, v = P.transcription, P.transcription.prompt_version
    parts = prompts.parts(v)
    check_prompt(parts, v, tp)
    common = {  # api.complete's arguments for either unit
        "llm_params": P.llm,
        "cache_path": cache_path,
        "settings": {"temperature": tp.temperature, "max_tokens": tp.max_tokens},
        "retries": tp.validation_retries,
        "batch_dir": batch_dir,
    }
    if tp.unit == "dialogue":
        reqs = []
        for d in dialogues:
            r = dialogue_request(d, parts, v)
            r.validate = lambda text, d=d: transcript.validate_dialogue(text, d, tp)
            reqs.append(r)
        res = api.complete(ep, reqs, desc="transcribe", **common)
        return [
            (d, r.parsed if r.ok else None, None if r.ok else r.error, [r])
            for d, r in zip(dialogues, res)
        ]
    per = [turn_requests(d, parts, v) for d in dialogues]
    reqs = []
    for d, items in zip(dialogues, per):
        for i, r in items:
            r.validate = lambda text, d=d, i=i: transcript.validate_turn(
                text, d.turns[i].text, d.turns[:i], tp, after=d.turns[i + 1 :]
            )
            reqs.append(r)
    # the local server ignores `stop`, so answers run on past their first line: validate_turn checks it
    res = iter(api.complete(ep, reqs, desc="transcribe turns", truncated_ok=True, **common))
    out = []
    for d, items in zip(dialogues, per):
        rs = [next(res) for _ in items]
        failed = [(i, r) for (i, _), r in zip(items, rs) if not r.ok]
        # a transport failure is what the dialogue failed on when there is one: a re-run answers it
        bad = next(
            (x for x in failed if x[1].error.startswith("transport")), failed[0] if failed else None
        )
        if bad:
            out.append((d, None, f"{_reason(bad[1].error)}: turn {bad[0]}: {bad[1].error}", rs))
            continue
        new = {i: r.parsed for (i, _), r in zip(items, rs)}
        turns = [Turn(t.speaker, new.get(i, t.text)) for i, t in enumerate(d.turns)]
        out.append((d, turns, None, rs))
    return out


def transcribe(
    ep, dialogues: list[Dialogue], P, cache_path, batch_dir=None
) -> tuple[list, list, dict]:
    """Rewrite, validate and account: (records, failures, report)."""
    if batch_dir is not None and ep.provider != "remote":
        raise ValueError(
            "transcription.batch_api needs llm.provider: remote (the Batch API is OpenAI's)"
        )
    t0 = time.perf_counter()
    rows = _by_dialogue(ep, dialogues, P, cache_path, batch_dir)
    wall = time.perf_counter() - t0
    v = P.transcription.prompt_version
    records = [to_record(d, turns, v) for d, turns, _, _ in rows if turns is not None]
    failures = [
        {
            "source_corpus": d.corpus,
            "source_id": str(d.id),
            "reason": _reason(err),
            "error": err,
            "raw": [r.raw for r in rs],
        }
        for d, turns, err, rs in rows
        if turns is None
    ]
    require_transport(failures, len(rows), P.llm)
    units = [r for *_, rs in rows for r in rs]
    use = api.usage(units, P.llm, ep.model)
    report = {
        "unit": P.transcription.unit,
        "prompt_version": prompts.name(v),
        "model": P.llm.model,
        "attempted": len(rows),
        REPORT_VALID: len(records),
        "pass_rate": round(len(records) / len(rows), 3) if rows else None,
        REPORT_FAILED: dict(Counter(f["reason"] for f in failures)),
        "units_attempted": len(units),
        "units_valid": sum(r.ok for r in units),
        "units_retried": sum(r.attempts > 1 for r in units),
        "units_failed_by_reason": dict(Counter(_reason(r.error) for r in units if not r.ok)),
        "rejected_answers_by_reason": dict(Counter(_reason(e) for r in units for e in r.errors)),
        **use,
        "wall_s": round(wall, 2),
        "requests_per_s": round(use["api_calls"] / wall, 3) if wall > 0 else None,
        **(
            {
                "behaviours": dict(
                    Counter(
                        schema.strip_tag(m["content"])[0]
                        for r in records
                        for m in r["messages"]
                        if m["role"] == "assistant"
                    )
                )
            }
            if P.transcription.tag_behaviour
            else {}
        ),
        "by_corpus": {
            c: {
                "attempted": sum(d.corpus == c for d, *_ in rows),
                "valid": sum(r["source_corpus"] == c for r in records),
            }
            for c in sorted({d.corpus for d, *_ in rows})
        },
    }
    return records, failures, report


def require_transport(failures: list[dict], attempted: int, llm_params) -> None:
    """Fail the stage when more than llm.max_transport_failures of its dialogues failed on transport
    errors (a dead or flaky endpoint): their answers were never judged, so the data would be lost."""
    transport = [f for f in failures if f["reason"] == "transport"]
    share = len(transport) / attempted if attempted else 0.0
    if transport and share > llm_params.max_transport_failures:
        raise RuntimeError(
            f"{len(transport)} of {attempted} dialogues failed on transport errors ({share:.0%} > "
            f"llm.max_transport_failures {llm_params.max_transport_failures:.0%}); first: "
            f"{transport[0]['source_corpus']}/{transport[0]['source_id']}: {transport[0]['error']}. "
            "Every finished answer is cached: re-run to resume."
        )


# ----------------------------------------------------------------------------- split and save
def _allocate(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split n over groups in proportion to their sizes (largest remainder, capped at each size)."""
    total = sum(sizes.values())
    n = min(n, total)
    exact = {g: n * s / total for g, s in sizes.items()} if total else {}
    out = {g: int(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (-(exact[g] - out[g]), g)):
        if sum(out.values()) >= n:
            break
        if out[g] < sizes[g]:
            out[g] += 1
    return out


def split(records: list[dict], n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """Seeded split stratified by source corpus: test first (n_test), train from the rest (n_train)."""
    groups: dict[str, list] = {}
    for r in sorted(records, key=lambda r: r["id"]):  # input order must not matter
        groups.setdefault(r["source_corpus"], []).append(r)
    for c, g in groups.items():
        random.Random(f"{seed}:{c}").shuffle(g)
    total = len(records)
    # keep at least one record for training when there are fewer than n_train + n_test
    n_test = min(n_test, max(0, total - 1)) if total > 1 else 0
    test_n = _allocate(n_test, {c: len(g) for c, g in groups.items()})
    rest = {c: g[test_n[c] :] for c, g in groups.items()}
    train_n = _allocate(n_train, {c: len(g) for c, g in rest.items()})
    test = [r for c, g in groups.items() for r in g[: test_n[c]]]
    train = [r for c, g in rest.items() for r in g[: train_n[c]]]
    return train, test


def save(
    out_dir, train: list[dict], test: list[dict], report: dict, failures: list[dict]
) -> list[Path]:
    """Write train/test.jsonl, mi_corpus/ (datasets on disk), failures.jsonl, report.json."""
    import json

    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for rel, rows in ((stages.TRAIN, train), (stages.TEST, test), (stages.FAILURES, failures)):
        f = out_dir / stages.file_name(
            rel
        )  # a unique temporary file, then a rename: never half written
        runs.write_atomic(f, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        files.append(f)
    dd = DatasetDict(
        {
            k: Dataset.from_list(v)
            if v
            else Dataset.from_dict(
                {
                    c: []
                    for c in (
                        "id",
                        "source_corpus",
                        "source_id",
                        "prompt_version",
                        "topic",
                        "messages",
                    )
                }
            )
            for k, v in (("train", train), ("test", test))
        }
    )
    with runs.atomic_path(out_dir / stages.file_name(stages.MI_CORPUS)) as tmp:
        dd.save_to_disk(str(tmp))
    rep = {**report, "n_train": len(train), "n_test": len(test)}
    report_json = out_dir / stages.file_name(stages.TRANSCRIPTION_REPORT)
    runs.write_atomic(report_json, json.dumps(rep, indent=2, ensure_ascii=False))
    if not train:  # written first, so that report.json and failures.jsonl say why
        raise RuntimeError(
            f"no valid MI dialogue to train on; failures by reason: {report.get(REPORT_FAILED)}"
            f" (see {out_dir / stages.file_name(stages.FAILURES)})"
        )
    return files + [out_dir / stages.file_name(stages.MI_CORPUS), report_json]


def report_table(report: dict) -> pd.DataFrame:
    """The report's scalar figures as a two-column table (by-reason counts flattened)."""
    rows = []
    for k, v in report.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{kk}", vv) for kk, vv in v.items() if not isinstance(vv, dict)]
            rows += [
                (f"{k}.{kk}.{x}", y)
                for kk, vv in v.items()
                if isinstance(vv, dict)
                for x, y in vv.items()
            ]
        else:
            rows.append((k, v))
    return pd.DataFrame(rows, columns=["figure", "value"]).set_index("figure")


def side_by_side(dialogues: list[Dialogue], record: dict) -> pd.DataFrame:
    """One MI record next to its source dialogue, turn by turn."""
    src = next(
        d
        for d in dialogues
        if d.corpus == record["source_corpus"] and str(d.id) == record["source_id"]
    )
    return pd.DataFrame(
        {
            "speaker": [t.speaker for t in src.turns],
            "source": [t.text for t in src.turns],
            "mi_rewrite": [m["content"] for m in record["messages"]],
        }
    )


def split_table(train: list[dict], test: list[dict]) -> pd.DataFrame:
    """Dialogues per source corpus in train and test."""
    rows = [
        {"split": s, "source_corpus": r["source_corpus"]}
        for s, rs in (("train", train), ("test", test))
        for r in rs
    ]
    df = pd.DataFrame(rows, columns=["split", "source_corpus"])
    return (
        df.value_counts()
        .unstack("split", fill_value=0)
        .reindex(columns=["train", "test"], fill_value=0)
    )
