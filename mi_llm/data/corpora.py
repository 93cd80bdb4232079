"""Corpus loaders: one per published format, each turning a file, a folder or a full download
into `schema.Dialogue`s (client/counselor turns) in a deterministic order.

A loader takes the corpus root (a file or a folder) and returns, per dialogue, either the
Dialogue or the DataError that made its record unusable; `load` raises the first error or skips
the bad records. Dialogue `source` is {"file": path relative to the corpus root, "record": the
dialogue's index in the file (0 for one-dialogue files), the JSONL line, or AnnoMI's
transcript_id}. A DataError names the file, the offending item (array index or "line N" of a
text, JSONL or CSV file; "(file)" when the whole file is unusable) and the field.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from mi_llm import params
from mi_llm.data import annomi, sources
from mi_llm.data.schema import (
    SPEAKER_OF,
    WHOLE_FILE,
    DataError,
    Dialogue,
    Turn,
    field_value,
    guard,
    read_text,
    relative_file,
    text_value,
    validate,
)

PROVENANCE = "PROVENANCE.json"  # beside a corpus: its source; "fixture": true marks a fixture


# ----------------------------------------------------------------------------- helpers
def natural_key(p: Path | str) -> list:
    """Sort key that orders case_2 before case_10 (digit runs compared as numbers)."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(p))]


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The corpus files under root (root itself if it is a file), in natural order."""
    if root.is_file():
        return [root]
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and p.name != PROVENANCE
    ]
    if not files:
        raise DataError(root, WHOLE_FILE, "path", f"no {'/'.join(suffixes)} files in this folder")
    return sorted(files, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def _json_array(file: Path, text: str | None = None) -> list:
    """The non-empty JSON array in a file, or DataError (bad JSON, not an array, empty)."""
    text = read_text(file) if text is None else text
    if not text.strip():
        raise DataError(file, WHOLE_FILE, "(file)", "empty file: no JSON array")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(file, f"line {e.lineno}", "json", f"bad JSON: {e.msg}") from e
    if not isinstance(data, list):
        raise DataError(
            file, WHOLE_FILE, "(top level)", f"expected a JSON array, got {type(data).__name__}"
        )
    if not data:
        raise DataError(file, WHOLE_FILE, "(top level)", "empty array")
    return data


def _json_records(file: Path) -> Iterator[tuple[object, object]]:
    """Yield (record, obj) from a JSON array (record = index) or JSONL (record = 'line N')."""
    text = read_text(file)
    if not text.strip():
        raise DataError(file, WHOLE_FILE, "(file)", "empty file: no records")
    if text.lstrip().startswith("["):
        yield from enumerate(_json_array(file, text))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {n}", DataError(file, f"line {n}", "json", f"bad JSON: {e.msg}")


# ----------------------------------------------------------------------------- CPsyCounD
# Turn prefixes of CPsyCounD's text files. A known speaker may carry a qualifier in full-width
# brackets (case_56: 来访者（姚先生）：, a couple in joint counselling). Lines without a prefix
# continue the previous turn (numbered lists, stage notes such as （一段时间后）).
CPSYCOUND_SPEAKERS = {"来访者": "client", "心理咨询师": "counselor"}
# Family members who join a session speak on the client side (case_76: 妈妈：). Only recognised at
# a turn boundary (after a blank line), so that list items with a colon stay continuation lines.
CPSYCOUND_CLIENT_SIDE = ("妈妈", "爸爸", "母亲", "父亲", "丈夫", "妻子", "女儿", "儿子")
_CPSY_PREFIX = re.compile(r"^(?P<label>[\u4e00-\u9fff]{1,6})(?:（[^）\n]{1,12}）)?：")


# A label that names a speaker role but not the corpus's own (咨询师： for 心理咨询师：, 访者：) is an
# error wherever it stands: merged into the previous turn it would put one speaker's words in the
# other's mouth. At a turn boundary every unknown label is one.
_SPEAKERISH = re.compile(r"(师|者|员|生)$")


def _cpsycound_speaker(line: str, at_boundary: bool, file=None, n=None):
    """(speaker, label, rest) when the line opens a turn, else None; DataError for an unknown label
    at a turn boundary or one that names a speaker role."""
    m = _CPSY_PREFIX.match(line)
    if not m:
        return None
    label = m.group("label")
    if label in CPSYCOUND_SPEAKERS:
        return CPSYCOUND_SPEAKERS[label], m.group(0)[:-1], line[m.end() :]
    if at_boundary and label in CPSYCOUND_CLIENT_SIDE:
        return "client", m.group(0)[:-1], line[m.end() :]
    if file is not None and (at_boundary or _SPEAKERISH.search(label)):
        raise DataError(
            file,
            f"line {n}",
            "speaker",
            f"unknown speaker label {label + '：'!r} (expected 来访者：, 心理咨询师： or a family "
            f"member at a turn boundary: {'/'.join(CPSYCOUND_CLIENT_SIDE)})",
        )
    return None


def _cpsycound_file(root: Path, file: Path) -> Dialogue:
    """Parse one CPsyCounD case_N.txt (CRLF text, one dialogue) into a Dialogue."""
    lines = read_text(file).splitlines()  # splitlines also strips the CRLF's \r
    turns: list[tuple[int, Turn]] = []  # (line number, turn)
    prev_blank = True
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            prev_blank = True
            continue
        opened = _cpsycound_speaker(line, prev_blank, file, n)
        prev_blank = False
        if opened:
            speaker, label, rest = opened
            ann = {"speaker_label": label} if label not in CPSYCOUND_SPEAKERS else {}
            turns.append((n, Turn(speaker, rest.strip(), ann)))
        elif turns:
            turns[-1][1].text = (turns[-1][1].text + "\n" + line).strip()
        else:
            head = line.split("：", 1)[0][:12] if "：" in line[:13] else line[:12]
            raise DataError(
                file,
                f"line {n}",
                "speaker",
                f"unknown speaker prefix {head!r} (expected 来访者： or 心理咨询师：)",
            )
    if not turns:
        raise DataError(file, WHOLE_FILE, "turns", "no turns (empty file)")
    for n, t in turns:
        if not t.text:
            raise DataError(file, f"line {n}", "text", f"empty {t.speaker} turn")
    return Dialogue(
        file.stem,
        "cpsycound",
        [t for _, t in turns],
        {},
        {"file": relative_file(root, file), "record": 0},
    )


def load_cpsycound(root: Path) -> Iterator[Dialogue | DataError]:
    """CPsyCounD: a Data/ folder of case_N.txt files (or one file)."""
    return _one_per_file(root, (".txt",), _cpsycound_file)


# ----------------------------------------------------------------------------- CPsyCounE
CPSYCOUNE_SPEAKERS = {"求助者": "client", "支持者": "counselor"}


def _cpsycoune_file(root: Path, file: Path) -> Dialogue:
    """Parse one CPsyCounE <Topic>/<k>.json (JSON array of prefixed strings)."""
    turns = []
    for i, s in enumerate(_json_array(file)):
        s = text_value(s, file, i, "utterance")
        label, sep, rest = s.partition("：")
        if not sep or label not in CPSYCOUNE_SPEAKERS:
            raise DataError(
                file,
                i,
                "speaker",
                f"unknown speaker prefix {s[:8]!r} (expected 求助者： or 支持者：)",
            )
        turns.append(Turn(CPSYCOUNE_SPEAKERS[label], text_value(rest, file, i, "text")))
    rel = relative_file(root, file)
    topic = file.parent.name  # the topic is only given by the folder
    return Dialogue(
        rel.rsplit(".", 1)[0], "cpsycoune", turns, {"topic": topic}, {"file": rel, "record": 0}
    )


def load_cpsycoune(root: Path) -> Iterator[Dialogue | DataError]:
    """CPsyCounE: topic folders of k.json files (topic = folder name)."""
    return _one_per_file(root, (".json",), _cpsycoune_file)


# ----------------------------------------------------------------------------- SmileChat
SMILECHAT_SPEAKERS = {"client": "client", "counselor": "counselor"}


def _smilechat_file(root: Path, file: Path) -> Dialogue:
    """Parse one SmileChat N.json (array of {role, content, annotation})."""
    turns = []
    for i, m in enumerate(_json_array(file)):
        role = field_value(m, "role", file, i, str)
        if role not in SMILECHAT_SPEAKERS:
            raise DataError(
                file, i, "role", f"unknown role {role!r} (expected client or counselor)"
            )
        text = text_value(field_value(m, "content", file, i), file, i, "content")
        labels = [a.get("label", "") for a in m.get("annotation") or [] if isinstance(a, dict)]
        ann = {"labels": labels} if any(labels) else {}  # the sample's labels are all empty
        turns.append(Turn(SMILECHAT_SPEAKERS[role], text, ann))
    rel = relative_file(root, file)
    return Dialogue(rel.rsplit(".", 1)[0], "smilechat", turns, {}, {"file": rel, "record": 0})


def load_smilechat(root: Path) -> Iterator[Dialogue | DataError]:
    """SmileChat: a data/ folder of N.json files (or one file)."""
    return _one_per_file(root, (".json",), _smilechat_file)


# ----------------------------------------------------------------------------- OpenAI-style records
_OPENAI_SPEAKERS = SPEAKER_OF


def _messages(obj, file, record, unknown_role: str | None) -> tuple[list[Turn], list[str]]:
    """Turns and system texts of an OpenAI-style `messages` list.

    user -> client, assistant -> counselor; other roles -> `unknown_role`, or a DataError if None.
    """
    msgs = field_value(obj, "messages", file, record, list)
    turns, system = [], []
    for i, m in enumerate(msgs):  # field names are formatted only for an error (full corpora)
        if not isinstance(m, dict):
            raise DataError(
                file, record, f"messages[{i}]", f"expected an object, got {type(m).__name__}"
            )
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise DataError(file, record, f"messages[{i}].role", "missing or not a string")
        if not (isinstance(content, str) and content.strip()):
            text_value(content, file, record, f"messages[{i}].content")  # raises the DataError
        text = content.strip()
        if role == "system":
            system.append(text)
        elif role in _OPENAI_SPEAKERS or unknown_role:
            turns.append(Turn(_OPENAI_SPEAKERS.get(role, unknown_role), text))
        else:
            raise DataError(file, record, f"messages[{i}].role", f"unknown role {role!r}")
    if not turns:
        raise DataError(file, record, "messages", "no user/assistant messages")
    # a chat record's roles alternate (chat templates refuse anything else) and both speak
    for i, (a, b) in enumerate(itertools.pairwise(turns)):
        if a.speaker == b.speaker:
            raise DataError(
                file,
                record,
                "messages",
                f"roles do not alternate: turns {i} and {i + 1} are both {a.speaker}",
            )
    if len(turns) < 2:
        raise DataError(file, record, "messages", f"one speaker only ({turns[0].speaker})")
    return turns, system


def _records(root: Path, corpus: str, parse: Callable) -> Iterator[Dialogue | DataError]:
    """Run parse(obj, file, record) -> (id, turns, meta) over every record of every JSON(L) file."""
    files = _files(root, (".json", ".jsonl"))
    for file in files:
        rel = relative_file(root, file)
        try:
            records = list(_json_records(file))
        except DataError as e:
            yield e
            continue
        for record, obj in records:
            if isinstance(obj, DataError):
                yield obj
                continue
            try:
                rid, turns, meta = parse(obj, file, record)
            except DataError as e:
                yield e
                continue
            # ids are the records' own; with several files they are prefixed by the file
            did = rid if len(files) == 1 else f"{rel.rsplit('.', 1)[0]}/{rid}"
            yield Dialogue(did, corpus, turns, meta, {"file": rel, "record": record})


def _record_id(rid, file, record) -> str:
    if isinstance(rid, bool) or not isinstance(rid, (int, str)) or not str(rid).strip():
        raise DataError(file, record, "id", f"expected an integer or a string, got {rid!r}")
    return str(rid)


def _psydt_record(obj, file, record):
    rid = _record_id(field_value(obj, "id", file, record), file, record)
    tag = text_value(field_value(obj, "normalizedTag", file, record), file, record, "normalizedTag")
    turns, system = _messages(obj, file, record, unknown_role=None)
    meta = {"topic": tag}
    if system:
        meta["system"] = "\n\n".join(system)
    return rid, turns, meta


def load_psydtcorpus(root: Path) -> Iterator[Dialogue | DataError]:
    """PsyDTCorpus: JSON array or JSONL of {id, normalizedTag, messages} (system kept in meta)."""
    yield from _records(root, "psydtcorpus", _psydt_record)


def _soulchat_record(obj, file, record):
    # Only `messages` is verified (FORMATS.md); id and topic are tolerated when missing.
    turns, system = _messages(obj, file, record, unknown_role="counselor")
    rid = _record_id(obj.get("id", record), file, record)
    meta = {}
    topic = obj.get("topic")
    if topic is not None:
        meta["topic"] = text_value(topic, file, record, "topic")
    if system:
        meta["system"] = "\n\n".join(system)
    return rid, turns, meta


def load_soulchatcorpus(root: Path) -> Iterator[Dialogue | DataError]:
    """SoulChatCorpus: JSON(L) records {id?, topic?, messages}; user = client, else counselor."""
    yield from _records(root, "soulchatcorpus", _soulchat_record)


# ----------------------------------------------------------------------------- registry
def _one_per_file(root: Path, suffixes: tuple, parse: Callable) -> Iterator[Dialogue | DataError]:
    """Run parse(root, file) -> Dialogue over every file; a bad file yields its DataError."""
    for file in _files(root, suffixes):
        yield guard(parse, root, file)


LOADERS: dict[str, Callable[[Path], Iterator[Dialogue | DataError]]] = {
    "cpsycound": load_cpsycound,
    "cpsycoune": load_cpsycoune,
    "smilechat": load_smilechat,
    "psydtcorpus": load_psydtcorpus,
    "soulchatcorpus": load_soulchatcorpus,
    "annomi": annomi.load_annomi,
}
NAMES = tuple(LOADERS)


def load_with_report(name: str, path, on_error: str = "raise", limit: int | None = None):
    """(dialogues, {"n_ok", "n_bad", "errors": [{file, record, field, problem}]}) of one corpus."""
    if name not in LOADERS:
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(NAMES)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(path)
    if not root.exists():
        raise DataError(root, WHOLE_FILE, "path", f"no such file or folder (corpus {name})")
    dialogues, errors, seen = [], [], {}
    for item in LOADERS[name](root):
        if isinstance(item, Dialogue):
            item = _checked(item, root, seen)
        if isinstance(item, DataError):
            if on_error == "raise":
                raise item
            errors.append(
                {
                    "file": item.file,
                    "record": item.record,
                    "field": item.field,
                    "problem": item.problem,
                }
            )
            continue
        dialogues.append(item)
        if limit is not None and len(dialogues) >= limit:
            break
    if not dialogues and on_error == "raise":
        raise DataError(root, WHOLE_FILE, "(file)", f"no dialogues in corpus {name}")
    return dialogues, {
        "n_ok": len(dialogues),
        "n_bad": len(errors),
        "errors": errors,
        "findings": findings(dialogues),
    }


def findings(dialogues: list[Dialogue]) -> dict:
    """Data-quality findings of accepted dialogues (formats that allow them): ids of dialogues whose
    speakers do not alternate, and of those with one speaker only."""

    def alternates(d):
        return all(a.speaker != b.speaker for a, b in itertools.pairwise(d.turns))

    return {
        "non_alternating": [d.id for d in dialogues if not alternates(d)],
        "single_speaker": [d.id for d in dialogues if len({t.speaker for t in d.turns}) < 2],
    }


def _checked(d: Dialogue, root: Path, seen: dict) -> Dialogue | DataError:
    """The dialogue if its turns are valid and its id is new in the corpus, else the DataError.

    The file's full path is built only for an error: a stat and a path join per dialogue cost
    seconds on a full corpus (SoulChatCorpus has 258,354 dialogues).
    """
    record = d.source["record"]
    try:
        validate(d)
    except DataError:
        try:
            validate(d, _source_file(root, d), record)  # the same check, naming the full path
        except DataError as e:
            return e
    if d.id in seen:
        first = "{} record {}".format(*seen[d.id])
        return DataError(
            _source_file(root, d), record, "id", f"duplicate id {d.id!r} (first at {first})"
        )
    seen[d.id] = (d.source["file"], record)
    return d


def _source_file(root: Path, d: Dialogue) -> Path:
    return (root if root.is_dir() else root.parent) / d.source["file"]


def load(name: str, path, on_error: str = "raise", limit: int | None = None) -> list[Dialogue]:
    """The dialogues of corpus `name` read from `path` (raise: the first bad record raises)."""
    return load_with_report(name, path, on_error, limit)[0]


# ----------------------------------------------------------------------------- provenance
def provenance(path) -> dict | None:
    """The PROVENANCE.json describing a corpus path: in its folder or up to 3 folders above."""
    p = Path(path).resolve()
    folder = p if p.is_dir() else p.parent
    for d in [folder, *folder.parents][:4]:
        f = d / PROVENANCE
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f, f"line {e.lineno}", "json", f"bad JSON: {e.msg}") from e
    return None


def is_fixture(path) -> bool:
    """True when the corpus at path was written for this project (its PROVENANCE says so)."""
    prov = provenance(path)
    return bool(prov and prov.get("fixture") is True)


def corpus_problems(P) -> list[str]:
    """Corpus paths that are missing (with the `data fetch` command that brings them) or that are
    fixtures while corpora.allow_fixtures is false."""
    errs = []
    for name, src in P.corpora.sources.items():
        path = params.path(src)
        if not path.exists():
            errs.append(
                f"corpora.sources.{name}: path {src} does not exist{_how_to_get(name, src)}"
            )
        elif not P.corpora.allow_fixtures and is_fixture(path):
            errs.append(
                f"corpora.sources.{name}: {src} is a fixture written for this project (its "
                'PROVENANCE.json says "fixture": true), not the real corpus; get the real one with '
                f"`python -m mi_llm data fetch {name}` and point at it, or set "
                "corpora.allow_fixtures: true (smoke runs and tests only)"
            )
    return errs


def _how_to_get(name: str, src: str) -> str:
    """'; get it with `python -m mi_llm data fetch NAME [--dest D]`' for a corpus of the registry."""

    s = next((s for s in sources.SOURCES.values() if s.loader == name), None)
    if s is None:
        return ""
    tail, parts = PurePosixPath(s.name, s.load_path).parts, PurePosixPath(src).parts
    dest = sources.DEFAULT_DEST
    if len(parts) > len(tail) and parts[-len(tail) :] == tail:
        dest = str(PurePosixPath(*parts[: -len(tail)]))
    opt = "" if dest == sources.DEFAULT_DEST else f" --dest {dest}"
    return (
        f"; get it with `python -m mi_llm data fetch {s.name}{opt}` (it writes "
        f"{sources.load_path(s, dest)}; `python -m mi_llm data list` shows the source)"
    )
