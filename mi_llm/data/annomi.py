"""AnnoMI loader: its CSVs (simple and full) into one `schema.Dialogue` per transcript.

Registered in mi_llm.data.corpora as "annomi" (corpora.load("annomi", path)); it shares the field
helpers of mi_llm.data.schema and their error conventions: a DataError names the CSV, "line N" and the
column.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mi_llm.data.schema import (
    WHOLE_FILE,
    DataError,
    Dialogue,
    Turn,
    guard,
    relative_file,
    text_value,
)

# AnnoMI-simple holds one (majority) annotation per utterance; AnnoMI-full one row per annotator
# (428 utterances of 7 transcripts were coded by 10 annotators) and adds the subtypes. A folder
# reads simple for the utterances and codes and takes the subtype columns from full when present,
# each as the most frequent value among an utterance's annotators (ties: lowest annotator_id).
# Verified: simple's main_therapist_behaviour is such a majority value for all 428 utterances.
ANNOMI_SIMPLE, ANNOMI_FULL = "AnnoMI-simple.csv", "AnnoMI-full.csv"
ANNOMI_REQUIRED = (
    "transcript_id",
    "mi_quality",
    "video_title",
    "topic",
    "utterance_id",
    "interlocutor",
    "utterance_text",
    "main_therapist_behaviour",
    "client_talk_type",
)
ANNOMI_CODES = ("main_therapist_behaviour", "client_talk_type")
ANNOMI_FULL_CODES = ("therapist_input_subtype", "reflection_subtype", "question_subtype")
# each behaviour's own yes/no column (an utterance can hold a question and a reflection)
ANNOMI_FULL_CODES += ("therapist_input_exists", "reflection_exists", "question_exists")
ANNOMI_SPEAKERS = {"therapist": "counselor", "client": "client"}


def _annomi_rows(file: Path) -> dict:
    """{(transcript_id, utterance_id): [(line, row), ...]} of one AnnoMI CSV, columns checked."""
    try:
        return _annomi_read(file)
    except UnicodeDecodeError as e:
        raise DataError(
            file, WHOLE_FILE, "encoding", f"not UTF-8: {e.reason} at byte {e.start}"
        ) from None
    except csv.Error as e:  # strict parsing: an unterminated quote is a cut file, not an utterance
        raise DataError(file, WHOLE_FILE, "csv", f"truncated or malformed CSV: {e}") from None


def _annomi_read(file: Path) -> dict:
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, strict=True)
        missing = [c for c in ANNOMI_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(file, "line 1", missing[0], f"missing column(s) {missing}")
        rows: dict = {}
        for row in reader:
            n = reader.line_num
            if (
                None in row.values() or None in row
            ):  # fewer or more fields than the header: cut or broken
                n_fields = len([v for k, v in row.items() if k is not None and v is not None])
                raise DataError(
                    file,
                    f"line {n}",
                    "(row)",
                    f"{n_fields} of {len(reader.fieldnames)} "
                    "fields: the row is truncated or malformed",
                )
            try:
                key = (int(row["transcript_id"]), int(row["utterance_id"]))
            except (TypeError, ValueError):
                field = (
                    "transcript_id" if not str(row["transcript_id"]).isdigit() else "utterance_id"
                )
                raise DataError(
                    file, f"line {n}", field, f"not an integer: {row[field]!r}"
                ) from None
            rows.setdefault(key, []).append((n, row))
    if not rows:
        raise DataError(file, WHOLE_FILE, "(file)", "no rows: the CSV holds a header only")
    return rows


def _majority(rows: list, column: str) -> str:
    """The most frequent value of a column among an utterance's annotators (ties: lowest id)."""
    rows = sorted(rows, key=lambda r: int(r[1].get("annotator_id") or 0))
    return Counter(r[1][column] for r in rows).most_common(1)[0][0]


def _annomi_turn(file: Path, line: int, row: dict, extra: dict) -> Turn:
    speaker = ANNOMI_SPEAKERS.get(row["interlocutor"])
    if speaker is None:
        raise DataError(
            file, f"line {line}", "interlocutor", f"unknown interlocutor {row['interlocutor']!r}"
        )
    text = text_value(row["utterance_text"], file, f"line {line}", "utterance_text")
    return Turn(speaker, text, {**{c: row[c] for c in ANNOMI_CODES}, **extra})


def load_annomi(root: Path) -> Iterator[Dialogue | DataError]:
    """AnnoMI: its folder (simple + full) or one of its CSVs; one dialogue per transcript."""
    if root.is_dir():
        simple, full = root / ANNOMI_SIMPLE, root / ANNOMI_FULL
        main = simple if simple.exists() else full
        if not main.exists():
            raise DataError(
                root, WHOLE_FILE, "path", f"neither {ANNOMI_SIMPLE} nor {ANNOMI_FULL} here"
            )
        full = full if full.exists() and main is simple else None
    else:
        main, full = root, None
    try:
        rows = _annomi_rows(main)
        full_rows = _annomi_rows(full) if full else {}
    except DataError as e:  # a bad header or id spoils the whole file
        yield e
        return
    by_transcript: dict = {}
    for key in sorted(rows):
        by_transcript.setdefault(key[0], []).append(key)
    for tid, keys in by_transcript.items():
        yield guard(_annomi_dialogue, root, main, tid, keys, rows, full_rows or rows)


def _annomi_dialogue(root, file, tid, keys, rows, code_rows) -> Dialogue:
    """One transcript's utterances in utterance_id order, codes collapsed over annotators."""
    turns = []
    for key in keys:
        line, row = rows[key][0]
        if len(rows[key]) > 1 and "annotator_id" not in row:
            raise DataError(
                file,
                f"line {rows[key][1][0]}",
                "utterance_id",
                f"utterance {key[1]} of transcript {tid} appears twice",
            )
        group = code_rows.get(key, [])
        extra = {c: _majority(group, c) for c in ANNOMI_FULL_CODES if group and c in group[0][1]}
        if len(rows[key]) > 1:  # the full file itself: the codes of the majority, not row 0
            row = {**row, **{c: _majority(rows[key], c) for c in ANNOMI_CODES}}
        if group and "annotator_id" in group[0][1]:
            extra["n_annotators"] = len(group)
        turns.append(_annomi_turn(file, line, row, extra))
    first = rows[keys[0]][0][1]
    meta = {
        "topic": first["topic"].strip(),
        "mi_quality": first["mi_quality"],
        "video_title": first["video_title"],
        "video_url": first.get("video_url", ""),
    }
    if meta["mi_quality"] not in ("high", "low"):
        raise DataError(
            file,
            f"line {rows[keys[0]][0][0]}",
            "mi_quality",
            f"expected high or low, got {meta['mi_quality']!r}",
        )
    return Dialogue(
        str(tid), "annomi", turns, meta, {"file": relative_file(root, file), "record": tid}
    )
