"""One dialogue schema for every corpus: ordered client/counselor turns plus where they came from."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPEAKERS = ("client", "counselor")
ROLES = ("system", "user", "assistant")  # chat-messages roles
ROLE_OF = {"client": "user", "counselor": "assistant"}  # speaker -> chat role
SPEAKER_OF = {role: speaker for speaker, role in ROLE_OF.items()}  # chat role -> speaker
# CJK ideographs: Extension A, the unified block and the compatibility ideographs
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK = re.compile(f"[{CJK_CHARS}]")
WHOLE_FILE = "(file)"  # the `record` of an error that spoils a whole file (bad JSON, not a list)


class DataError(ValueError):
    """Bad input data; the message names the file, the record and the field."""

    def __init__(self, file, record, field_name, problem):
        self.file, self.record, self.field, self.problem = str(file), record, field_name, problem
        super().__init__(f"{file}: record {record}: field {field_name!r}: {problem}")


# ----------------------------------------------------------------------------- fields
# Read a field of a corpus record or raise the DataError that names it; shared by every loader.
def read_text(file: Path) -> str:
    """A file's UTF-8 text (a BOM dropped), or DataError naming the whole file."""
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(file, WHOLE_FILE, "encoding", f"not UTF-8: {e}") from e


def text_value(value, file, record, field_name) -> str:
    """The stripped text of a field, or DataError when it is not a non-empty string."""
    if not isinstance(value, str):
        raise DataError(file, record, field_name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(file, record, field_name, "empty text")
    return value.strip()


def field_value(obj, key, file, record, kind=None):
    """obj[key], or DataError naming the missing field / wrong type."""
    if not isinstance(obj, dict):
        raise DataError(file, record, key, f"record is a {type(obj).__name__}, expected an object")
    if key not in obj:
        raise DataError(file, record, key, "missing field")
    if kind is not None and not isinstance(obj[key], kind):
        raise DataError(
            file, record, key, f"expected {kind.__name__}, got {type(obj[key]).__name__}"
        )
    return obj[key]


def relative_file(root: Path, file: Path) -> str:
    """A corpus file's path relative to the corpus root (its folder when root is a file)."""
    base = root if root.is_dir() else root.parent
    return file.relative_to(base).as_posix()


def guard(fn: Callable[..., Dialogue], *args) -> Dialogue | DataError:
    """fn(*args), or the DataError it raised (one bad record does not stop a loader)."""
    try:
        return fn(*args)
    except DataError as e:
        return e


@dataclass
class Turn:
    speaker: str  # "client" | "counselor"
    text: str
    annotations: dict = field(default_factory=dict)  # e.g. AnnoMI behaviour codes; empty elsewhere


@dataclass
class Dialogue:
    id: str  # unique within the corpus
    corpus: str  # registry name, e.g. "cpsycound"
    turns: list[Turn]
    meta: dict = field(default_factory=dict)  # topic, category, system prompt, quality label, ...
    source: dict = field(default_factory=dict)  # {"file": ..., "record": ...}

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (the JSONL form)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Dialogue:
        """Inverse of to_dict."""
        turns = [Turn(**t) for t in d["turns"]]
        return cls(d["id"], d["corpus"], turns, d.get("meta", {}), d.get("source", {}))

    def content_hash(self) -> str:
        """sha256 of the turns (speaker + text) alone: the identity of the dialogue's content."""
        payload = json.dumps([[t.speaker, t.text] for t in self.turns], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_messages(self, system: str | None = None) -> list[dict]:
        """Chat-messages form: client -> user, counselor -> assistant."""
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": ROLE_OF[t.speaker], "content": t.text} for t in self.turns]


def validate(d: Dialogue, file=None, record=None) -> Dialogue:
    """Raise DataError unless the dialogue has known speakers and non-empty text."""
    where = file or d.source.get("file", "?")
    rec = record if record is not None else d.source.get("record", d.id)
    if not d.turns:
        raise DataError(where, rec, "turns", "dialogue has no turns")
    for i, t in enumerate(d.turns):
        if t.speaker not in SPEAKERS:
            raise DataError(where, rec, f"turns[{i}].speaker", f"unknown speaker {t.speaker!r}")
        if not isinstance(t.text, str) or not t.text.strip():
            raise DataError(where, rec, f"turns[{i}].text", "empty or not a string")
    return d


def cjk_share(text: str, among: str = "letters") -> float:
    """Share of CJK characters among the CJK + Latin letters ("letters") or among all non-space
    characters ("chars"); 0 when there are none."""
    cjk = len(CJK.findall(text))
    if among == "letters":
        total = cjk + len(re.findall(r"[A-Za-z]", text))
    elif among == "chars":
        total = sum(not c.isspace() for c in text)
    else:
        raise ValueError(f"cjk_share: among must be 'letters' or 'chars', got {among!r}")
    return cjk / total if total else 0.0


def jsonl_rows(path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSONL file's non-blank lines; DataError names a bad line or a
    missing field."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {i}", "line", f"not JSON: {e.msg}") from None
            for k in required:
                if k not in r:
                    raise DataError(path, f"line {i}", k, "missing")
            yield i, r


def read_split(path: str | Path) -> list[dict]:
    """Read a split of stage 02 (train.jsonl, test.jsonl): records with an id and chat messages,
    each checked (DataError names the file, the record and the field)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, "line", f"not JSON: {e}") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), (str, int)):
                raise DataError(path, i, "id", "missing or not a string")
            msgs = rec.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise DataError(path, rec["id"], "messages", "missing or empty")
            for j, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES:
                    raise DataError(path, rec["id"], f"messages[{j}].role", f"not one of {ROLES}")
                if not isinstance(m.get("content"), str) or not m["content"].strip():
                    raise DataError(
                        path, rec["id"], f"messages[{j}].content", "empty or not a string"
                    )
            records.append(rec)
    return records


def write_jsonl(dialogues: Iterable[Dialogue], path: str | Path) -> None:
    """Write dialogues one JSON object per line (UTF-8, not ASCII-escaped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in dialogues)


def read_jsonl(path: str | Path) -> Iterator[Dialogue]:
    """Read dialogues written by write_jsonl."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    yield Dialogue.from_dict(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(path, i, "line", f"not a dialogue record: {e}") from e


# The next-behaviour label set: AnnoMI's main_therapist_behaviour with the question and
# reflection subtypes of AnnoMI-full (the split MITI cares about: %CR, open vs closed questions).
TAGS = (
    "open_question",
    "closed_question",
    "simple_reflection",
    "complex_reflection",
    "therapist_input",
    "other",
)

# ----------------------------------------------------------------------------- strategy tags
# Format: an ASCII control tag "<mi:complex_reflection> " at the start of a counselor turn. ASCII,
# not "[复杂反映]": one tag set for English (AnnoMI) and Chinese turns, no clash with brackets
# that occur in Chinese text, no special tokens to add (LoRA needs no embedding resize), readable
# English words a multilingual model already knows, and one exact regex to parse.
_TAG_RE = re.compile(r"^\s*<mi:([A-Za-z_]*)>[ \t]*")


def tag_text(text: str, label: str) -> str:
    """Prepend the control tag of an MI behaviour to a counselor turn."""
    if label not in TAGS:
        raise ValueError(f"unknown MI behaviour {label!r}; known: {list(TAGS)}")
    return f"<mi:{label}> {text}"


def strip_tag(text: str) -> tuple[str | None, str]:
    """Split a leading control tag off a turn: (label, text), or (None, text) when it has none."""
    m = _TAG_RE.match(text)
    if not m:
        return None, text
    if m.group(1) not in TAGS:
        raise ValueError(f"unknown MI behaviour tag <mi:{m.group(1)}>; known: {list(TAGS)}")
    return m.group(1), text[m.end() :]


def require_tag(text: str) -> tuple[str, str]:
    """Validator for tagged LLM output (stage 02): (label, text), ValueError(reason) if unusable."""
    label, rest = strip_tag(text)
    if label is None:
        raise ValueError(f"counselor turn lacks a leading <mi:behaviour> tag: {text[:60]!r}")
    if not rest.strip():
        raise ValueError(f"counselor turn has a <mi:{label}> tag but no text")
    return label, rest
