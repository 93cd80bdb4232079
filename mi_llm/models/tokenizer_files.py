"""Tokenizer folders that load fast: the added tokens in tokenizer_config.json as well.

transformers 5 saves a tokenizer's added tokens in tokenizer.json only, and reads that whole file a
second time for them when tokenizer_config.json does not list them: for Gemma 3's 33 MB
tokenizer.json, seconds more per load. Hub snapshots list them; every folder we write does too.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_tokenizer(tok, folder: str | Path) -> None:
    """tok.save_pretrained(folder), with its added tokens also in tokenizer_config.json."""
    tok.save_pretrained(str(folder))
    write_added_tokens(tok, folder)


def write_added_tokens(tok, folder: str | Path) -> None:
    """Add tok's added tokens to folder/tokenizer_config.json as `added_tokens_decoder` (see
    save_tokenizer); a config that already lists them is left as it is."""
    cfg_file = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if "added_tokens_decoder" not in cfg:
        added = sorted(tok.added_tokens_decoder.items())
        cfg["added_tokens_decoder"] = {str(i): t.__getstate__() for i, t in added}
        cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
