"""The LLM answer cache: one SQLite file per run, keyed by (model, settings, messages, attempt).

Every answer is committed as soon as it arrives, so a re-run or a resume after a crash asks nothing
twice; llm.complete reads and fills it, batch.run_batch fills it from the Batch API.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from mi_llm.params import path


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Cache:
    """SQLite store of finished answers; WAL, one committed row per answer (kill -9 safe)."""

    def __init__(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: committed rows survive a crash
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, request_key TEXT,"
            " model TEXT, text TEXT, finish_reason TEXT, prompt_tokens INT,"
            " completion_tokens INT, created REAL)"
        )
        self.db.commit()

    def get(self, key: str) -> Answer | None:
        row = self.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM answers WHERE key=?",
            (key,),
        ).fetchone()
        return Answer(*row) if row else None

    def put(self, key: str, request_key: str, model: str, a: Answer) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?)",
            (
                key,
                request_key,
                model,
                a.text,
                a.finish_reason,
                a.prompt_tokens,
                a.completion_tokens,
                time.time(),
            ),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def cache_path(P) -> Path:
    """The run's answer cache: P.llm.cache_path, or runs/<name>/llm_cache.sqlite."""
    return path(P.llm.cache_path) if P.llm.cache_path else P.run_dir / "llm_cache.sqlite"


def cache_key(model: str, settings: dict, messages: list[dict], attempt: int) -> str:
    """sha256 identity of one answer: model, generation settings, messages and attempt number."""
    blob = json.dumps([model, settings, messages, attempt], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
