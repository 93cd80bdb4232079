"""Stage 02: rewrite the selected corpora's dialogues into MI-style dialogues, validate, split.

Two units of rewriting, same client, cache and validation machinery:
- `dialogue` (GPT-4 class models): the whole dialogue in one answer, lines 来访者：/咨询师：.
- `turn` (small models): each counselor turn rewritten alone, in context (source turns before it and
  the client's next turn), few-shot; the dialogue is reassembled from its rewritten turns and fails,
  with the reason, if any of its turns fails. A source turn is never passed off as a rewrite.
With `tag_behaviour` every counselor turn must start with its MI behaviour tag (<mi:label>, see
mi_llm.forecast); the tag is checked and kept in the stored content, so SFT learns it unchanged.
Nothing invented, nothing lost: a whole-dialogue rewrite keeps the source's turn structure and its
client turns (equal after whitespace/punctuation normalisation, within
transcription.client_edit_tolerance); a stage whose dialogues failed on transport errors above
llm.max_transport_failures fails, so that a re-run resumes it from the answer cache.
"""

from __future__ import annotations

import difflib
import itertools
import random
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pandas as pd

from . import llm, prompts, runs, schema, stages
from .params import path as project_path
from .schema import ROLE_OF, DataError, Dialogue, Turn, cjk_share

LABEL = {"client": "来访者", "counselor": "咨询师"}
SPEAKER_OF = {"来访者": "client", "咨询师": "counselor", "心理咨询师": "counselor"}
LINE = re.compile(r"^\s*(来访者|心理咨询师|咨询师)\s*[：:]\s*(.*)$")
SPEAKER_INSIDE = re.compile(r"(来访者(?:接着说)?|心理咨询师|咨询师|求助者|支持者)\s*[：:]")
# labels a small model puts before its reply, echoing the prompt (原回复：…) or announcing it (改写：…)
REPLY_LABEL = re.compile(
    r"^\s*(?:原回复|原句|原文|改写后的回复|改写后|改写|回复|回答|MI回复|MI改写|新回复|输出)"
    r"\s*[：:]\s*"
)
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
    from . import corpora as corpora_mod

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


# ----------------------------------------------------------------------------- formats
def format_turns(turns: list[Turn]) -> str:
    """One "来访者：…" / "咨询师：…" line per turn (newlines inside a turn become spaces)."""
    return "\n".join(f"{LABEL[t.speaker]}：{' '.join(t.text.split())}" for t in turns)


def parse_dialogue(text: str) -> list[Turn]:
    """Parse labelled lines back into turns; unlabelled lines continue the previous turn."""
    turns: list[Turn] = []
    for line in text.strip().splitlines():
        m = LINE.match(line)
        if m:
            turns.append(Turn(SPEAKER_OF[m.group(1)], m.group(2).strip()))
        elif line.strip() and turns:
            turns[-1].text += line.strip()
        elif line.strip():
            raise ValueError(f"unparseable: text before the first speaker label: {line[:40]!r}")
    if not turns:
        raise ValueError("unparseable: no 来访者：/咨询师： lines")
    return turns


# ----------------------------------------------------------------------------- validation
def check_text(new: str, source: str, tp) -> None:
    """Language and length checks shared by both units; raises ValueError("reason: detail")."""
    if not new.strip():
        raise ValueError("empty: no text")
    src_cjk, new_cjk = cjk_share(source, "chars"), cjk_share(new, "chars")
    if src_cjk >= 0.3 and new_cjk < 0.5 * src_cjk:  # a Chinese source must give a Chinese rewrite
        raise ValueError(f"language: CJK share {new_cjk:.2f} vs source {src_cjk:.2f}")
    ratio = len(new) / max(1, len(source))
    if ratio < tp.min_length_ratio:
        raise ValueError(f"too_short: length ratio {ratio:.2f} < {tp.min_length_ratio}")
    if ratio > tp.max_length_ratio:
        raise ValueError(f"too_long: length ratio {ratio:.2f} > {tp.max_length_ratio}")


def check_prompt(parts: dict, version: str, tp) -> None:
    """The prompt asks for <mi:...> tags exactly when transcription.tag_behaviour is on."""
    asks = "<mi:" in parts.get("system", "")
    if asks != bool(tp.tag_behaviour):
        raise ValueError(
            f"transcription.prompt_version {version!r} {'asks' if asks else 'does not ask'} for "
            f"<mi:behaviour> tags but transcription.tag_behaviour is {tp.tag_behaviour}; use "
            + ("mi_tagged_v1 / mi_turn_tagged_v1" if tp.tag_behaviour else "an untagged version")
        )


def _untag(turns: list[Turn]) -> tuple[list[Turn], list[Turn]]:
    """Counselor turns must carry a tag: (turns with the tag normalised, turns without it)."""
    tagged, plain = [], []
    for i, t in enumerate(turns):
        if t.speaker == "counselor":
            try:
                label, rest = schema.require_tag(t.text)
            except ValueError as e:
                raise ValueError(f"untagged: turn {i}: {e}") from e
            t, bare = (
                Turn(t.speaker, schema.tag_text(rest.strip(), label)),
                Turn(t.speaker, rest.strip()),
            )
        else:
            bare = t
        tagged.append(t)
        plain.append(bare)
    return tagged, plain


def normalise(text: str) -> str:
    """Text for comparisons: NFKC, lower case, without whitespace, punctuation and symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PSZ")


def edit_share(new: str, source: str) -> float:
    """Share of the normalised texts that differs: 1 - difflib's similarity ratio (0 = equal)."""
    a, b = normalise(new), normalise(source)
    if a == b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def check_structure(turns: list[Turn], source: Dialogue, tp) -> None:
    """Same speakers turn by turn as the source, and the source's client turns kept (within tolerance)."""
    src = source.turns
    if len(turns) < len(src):
        raise ValueError(f"dropped_turns: {len(turns)} turns, source has {len(src)}")
    if len(turns) > len(src):
        raise ValueError(f"invented_turns: {len(turns)} turns, source has {len(src)}")
    for i, (t, s) in enumerate(zip(turns, src)):
        if t.speaker != s.speaker:
            raise ValueError(f"structure: turn {i} is {t.speaker}, in the source {s.speaker}")
    for i, (t, s) in enumerate(zip(turns, src)):
        if t.speaker == "client":
            share = edit_share(t.text, s.text)
            if share > tp.client_edit_tolerance:
                raise ValueError(
                    f"client_altered: turn {i} differs from the source by {share:.2f} "
                    f"> client_edit_tolerance {tp.client_edit_tolerance}: {t.text[:30]!r}"
                )


def _alternates(turns: list[Turn]) -> bool:
    return all(a.speaker != b.speaker for a, b in itertools.pairwise(turns))


def validate_dialogue(text: str, source: Dialogue, tp) -> list[Turn]:
    """A whole rewritten dialogue: parseable, alternating, same first speaker, counselor turns, language,
    length, then the source's turn structure with its client turns unchanged."""
    turns = parse_dialogue(text)
    tagged = turns
    if tp.tag_behaviour:  # checks below see the words only; the stored turns keep their tags
        tagged, turns = _untag(turns)
    if turns[0].speaker != source.turns[0].speaker:
        raise ValueError(
            f"first_speaker: starts with {turns[0].speaker}, source with {source.turns[0].speaker}"
        )
    if _alternates(source.turns):  # a source that does not alternate is matched turn by turn below
        for i in range(1, len(turns)):
            if turns[i].speaker == turns[i - 1].speaker:
                raise ValueError(
                    f"not_alternating: turns {i - 1} and {i} are both {turns[i].speaker}"
                )
    if not any(t.speaker == "counselor" and t.text for t in turns):
        raise ValueError("no_counselor: no counselor turn")
    check_text("".join(t.text for t in turns), "".join(t.text for t in source.turns), tp)
    check_structure(turns, source, tp)
    return tagged


def whole_sentences(line: str) -> str:
    """The line's complete sentences up to the first repeated one (small models run on and loop)."""
    if not line:
        return line
    kept, seen = [], set()
    for sent in re.findall(r"[^。？！?!….]*[。？！?!….]+[」”）)]*", line):
        if sent in seen:
            break
        seen.add(sent)
        kept.append(sent)
    if not kept:
        raise ValueError(f"incomplete: reply does not end a sentence: {line[-10:]!r}")
    return "".join(kept)


def validate_turn(text: str, source: str, context: list[Turn], tp) -> str:
    """One rewritten counselor turn: its first line, unlabelled, complete, new, in language, in length."""
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "")
    m = LINE.match(line)
    if m and SPEAKER_OF[m.group(1)] == "client":
        raise ValueError("wrong_speaker: answered as the client")
    line = m.group(2).strip() if m else line
    while lm := REPLY_LABEL.match(line):  # 原回复：… / 改写：… before the words
        line = line[lm.end() :]
    inside = SPEAKER_INSIDE.search(line)
    if inside:
        raise ValueError(f"speaker_label: the reply contains a speaker label {inside.group(0)!r}")
    label = None
    if tp.tag_behaviour:
        try:
            label, line = schema.require_tag(line)
        except ValueError as e:
            raise ValueError(f"untagged: {e}") from e
    line = whole_sentences(line.strip())
    key = normalise(line)
    if key == normalise(source) or any(key == normalise(t.text) for t in context):
        raise ValueError("copied: the reply repeats the source or the context")
    check_text(line, source, tp)
    return schema.tag_text(line, label) if label else line


# ----------------------------------------------------------------------------- requests
def request_key(version: str, d: Dialogue, turn: int | None = None) -> str:
    """Stable id of one unit: prompt version, dialogue content hash and (turn mode) turn index."""
    base = f"{prompts.name(version)}:{d.corpus}:{d.content_hash()[:16]}"
    return base if turn is None else f"{base}:{turn}"


def dialogue_request(d: Dialogue, parts: dict, version: str) -> llm.Request:
    """The whole-dialogue rewrite request."""
    msgs = [
        {"role": "system", "content": parts["system"]},
        {"role": "user", "content": prompts.render(parts["user"], dialogue=format_turns(d.turns))},
    ]
    return llm.Request(request_key(version, d), msgs)


def turn_requests(d: Dialogue, parts: dict, version: str) -> list[tuple[int, llm.Request]]:
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
            context=format_turns(d.turns[:i]) or "（对话开始）",
            source=" ".join(t.text.split()),
            next_client=" ".join(nxt.split()),
        )
        msgs = [
            {"role": "system", "content": parts["system"]},
            *shots,
            {"role": "user", "content": user},
        ]
        out.append((i, llm.Request(request_key(version, d, i), msgs)))
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
    common = {  # llm.complete's arguments for either unit
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
            r.validate = lambda text, d=d: validate_dialogue(text, d, tp)
            reqs.append(r)
        res = llm.complete(ep, reqs, desc="transcribe", **common)
        return [
            (d, r.parsed if r.ok else None, None if r.ok else r.error, [r])
            for d, r in zip(dialogues, res)
        ]
    per = [turn_requests(d, parts, v) for d in dialogues]
    reqs = []
    for d, items in zip(dialogues, per):
        for i, r in items:
            r.validate = lambda text, d=d, i=i: validate_turn(
                text, d.turns[i].text, d.turns[:i], tp
            )
            reqs.append(r)
    # the local server ignores `stop`, so answers run on past their first line: validate_turn checks it
    res = iter(llm.complete(ep, reqs, desc="transcribe turns", truncated_ok=True, **common))
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
    use = llm.usage(units, P.llm, ep.model)
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
