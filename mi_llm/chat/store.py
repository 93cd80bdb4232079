"""Chat sessions on disk: one schema.Dialogue line per session in runs/<name>/chat/<session>.jsonl,
with the model, variant, adapter hash, timestamps and crisis events."""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mi_llm.data.schema import Dialogue, Turn, validate


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

    def find(self, sid: str | None, history: list[tuple]) -> Session:
        """The named session, or the open one whose turns `history` repeats, or a new one."""
        with self.lock:
            if sid:
                if not all(c.isalnum() or c in "-_." for c in sid) or len(sid) > 100:
                    raise ValueError(
                        f"session id {sid!r}: letters, digits, - _ . only (100 at most)"
                    )
                if sid not in self.open:
                    self.open[sid] = self._new(sid)
                return self.open[sid]
            for s in self.open.values():
                turns = [(t.speaker, t.text) for t in s.dialogue.turns]
                if history and turns == history:
                    return s
            s = self._new(datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8])
            self.open[s.id] = s
            return s

    def record(
        self,
        s: Session,
        history: list[tuple],
        client: str,
        reply: str,
        turn_meta: dict,
        event: dict | None,
    ) -> None:
        """Set the session's turns to history + the client message + the reply; save it atomically."""
        d, now = s.dialogue, _now()
        old = d.turns
        turns = [
            old[i] if i < len(old) and (old[i].speaker, old[i].text) == h else Turn(h[0], h[1], {})
            for i, h in enumerate(history)
        ]
        turns.append(Turn("client", client, {"time": now, "screen": turn_meta["screen"]}))
        turns.append(
            Turn(
                "counselor",
                reply,
                {"time": _now(), **{k: v for k, v in turn_meta.items() if k != "screen"}},
            )
        )
        d.turns = turns
        d.meta["updated"] = _now()
        if event:
            d.meta["events"].append({**event, "time": now, "turn": len(turns) - 2})
        validate(d, s.file, s.id)
        tmp = s.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(d.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, s.file)


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
