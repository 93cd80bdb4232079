"""Chat sessions on disk: one schema.Dialogue line per session in runs/<name>/chat/<session>.jsonl,
with the model, variant, adapter hash, timestamps and crisis events.

A session is an append-only log (docs/reliability.md): an exchange is appended only when the
request's history is the session's turns as saved; a history that differs (shorter, edited, or
sent by 20 parallel requests at once) starts a new session linked to the old one
(`meta.forked_from`, `meta.forked_at_turn`), so no saved turn is ever replaced and no exchange
lost. A crisis event keeps the client text it refers to beside its turn index."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mi_llm.data.schema import Dialogue, Turn, validate

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_id(sid) -> str:
    """A session id that is a safe file name: ASCII letters, digits, - _ . (100 at most)."""
    if not isinstance(sid, str) or not SESSION_ID.fullmatch(sid):
        raise ValueError(
            f"session id {str(sid)[:120]!r}: ASCII letters, digits, - _ . only, starting with a "
            "letter or digit (100 at most)"
        )
    return sid


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------- sessions
@dataclass
class Session:
    id: str
    file: Path
    dialogue: Dialogue
    lock: threading.Lock = field(default_factory=threading.Lock)


class Sessions:
    """The chat's sessions, each saved as one schema.Dialogue line in <folder>/<id>.jsonl."""

    def __init__(self, folder, served_meta: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = served_meta
        self.open: dict[str, Session] = {}
        self.lock = threading.Lock()

    def _new(self, sid: str) -> Session:
        file = self.folder / f"{sid}.jsonl"
        if file.exists():  # a session named again after a restart continues its file
            d = Dialogue.from_dict(json.loads(file.read_text(encoding="utf-8").splitlines()[0]))
        else:
            d = Dialogue(
                sid,
                "chat",
                [],
                {**self.meta, "started": _now(), "events": []},
                {"file": str(file), "record": sid},
            )
        return Session(sid, file, d)

    def _register(self, history: list[tuple] = (), parent: Session | None = None) -> Session:
        """A new session under a fresh id (a fork of parent: its history up to where they part)."""
        sid = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8]
        s = self._new(sid)
        if parent is not None:
            old = parent.dialogue.turns
            k = 0
            while k < min(len(old), len(history)) and (old[k].speaker, old[k].text) == history[k]:
                k += 1
            s.dialogue.turns = list(old[:k]) + [Turn(h[0], h[1], {}) for h in history[k:]]
            s.dialogue.meta.update(forked_from=parent.id, forked_at_turn=k)
        else:
            s.dialogue.turns = [Turn(h[0], h[1], {}) for h in history]
        self.open[sid] = s
        return s

    def find(self, sid: str | None, history: list[tuple]) -> Session:
        """The named session, or the open one whose turns `history` repeats, or a new one (linked
        to the open session it shares the most turns with, when it shares any)."""
        with self.lock:
            if sid:
                check_id(sid)
                if sid not in self.open:
                    self.open[sid] = self._new(sid)
                return self.open[sid]
            best, shared = None, 0
            for s in self.open.values():
                turns = [(t.speaker, t.text) for t in s.dialogue.turns]
                if history and turns == history:
                    return s
                k = next((i for i, (a, b) in enumerate(zip(turns, history)) if a != b), None)
                k = min(len(turns), len(history)) if k is None else k
                if k > shared:
                    best, shared = s, k
            return self._register(history, best)

    def record(
        self,
        s: Session,
        history: list[tuple],
        client: str,
        reply: str,
        turn_meta: dict,
        event: dict | None,
    ) -> Session:
        """Append the client message and the reply to the session whose turns are `history`: s
        itself, else a new session forked from s; save it atomically and return it.

        The caller holds s.lock (one exchange at a time per session)."""
        if not s.dialogue.turns:  # a new named session takes the history it was started with
            s.dialogue.turns = [Turn(h[0], h[1], {}) for h in history]
        elif [(t.speaker, t.text) for t in s.dialogue.turns] != list(history):
            with self.lock:
                s = self._register(history, s)
        d, now = s.dialogue, _now()
        d.turns.append(Turn("client", client, {"time": now, "screen": turn_meta["screen"]}))
        d.turns.append(
            Turn(
                "counselor",
                reply,
                {"time": _now(), **{k: v for k, v in turn_meta.items() if k != "screen"}},
            )
        )
        d.meta["updated"] = _now()
        if event:
            turn = len(d.turns) - 2
            d.meta["events"].append({**event, "time": now, "turn": turn, "text": client})
        validate(d, s.file, s.id)
        tmp = s.file.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(d.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, s.file)
        return s


def read_sessions(folder) -> list[Dialogue]:
    """Every saved chat session of a folder (runs/<name>/chat/*.jsonl), oldest first."""
    from mi_llm.data.schema import read_jsonl

    out = []
    for f in sorted(Path(folder).glob("*.jsonl")):
        for d in read_jsonl(f):
            validate(d, f, d.id)
            out.append(d)
    if not out:
        raise FileNotFoundError(f"{folder}: no chat sessions (*.jsonl); talk to the model first")
    return sorted(out, key=lambda d: d.meta.get("started") or "")
