"""What makes an adapter (docs/reliability.md): the training split, the sft params and seed, the
base model's name, the sha256 of its weights (a `model_paths` folder, or the embedded model's
converted folder; a hub model by id and revision), and the registry entry that gives its chat
template and tokens. Stage 03 retrains when any of them changed since its checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mi_llm import stages
from mi_llm.models import registry
from mi_llm.params import Params
from mi_llm.params import path as params_path

TRAIN_FILE = stages.TRAIN

IDENTITY_FILE = "identity.json"  # in checkpoints/: what every checkpoint there was trained on


WEIGHTS_HASH_CACHE = "weights-sha256.json"  # in the user cache: folder hashes by file size and time


def weights_sha256(folder) -> str:
    """sha256 over a weights folder's files (relative path and sha256 of each, sorted by path).

    Each file's hash is cached by its path, size and modification time (a multi-GB folder is read
    once, not at every run); a file rewritten in place gets a new time and is read again."""
    from mi_llm.models.embedded import cache_root
    from mi_llm.runs import sha256_file, write_atomic

    folder = Path(folder).resolve()
    cache_file = cache_root() / WEIGHTS_HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    lines, changed = [], False
    files = (p for p in folder.rglob("*") if p.is_file())
    # a hub download's own .cache/ inside the folder is no weight; the folder itself may well sit
    # under a user cache (~/.cache/...), so only the path inside the folder is looked at
    for f in sorted(p for p in files if ".cache" not in p.relative_to(folder).parts):
        st = f.stat()
        key = f"{f}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key], changed = sha256_file(f), True
        lines.append(f"{cache[key]}  {f.relative_to(folder).as_posix()}\n")
    if not lines:
        raise FileNotFoundError(f"{folder}: no weight files to identify the base model by")
    if changed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(cache))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def base_identity(model_name: str, model_path=None) -> dict:
    """What the base model is: its name, its weights (a local folder's sha256, else the hub id at
    its revision) and the registry entry's template and tokens (sha256 of the entry)."""
    spec = registry.get(model_name)
    if model_path is None and spec.embedded:
        model_path = registry.weights_path(model_name)
    weights = (
        {"weights_sha256": weights_sha256(model_path)}
        if model_path is not None
        else {"weights_hub": f"{spec.hub_id}@{spec.revision or 'main'}"}
    )
    entry = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return {
        "base_model": model_name,
        **weights,
        "model_spec_sha256": hashlib.sha256(entry.encode("utf-8")).hexdigest(),
    }


def identity(P: Params, model_name: str, model_path=None) -> dict:
    """What an adapter is made of: the training split, the sft params (with the seed), the base
    model's name, weights and template (base_identity). A change to any retrains it."""
    from mi_llm.runs import sha256_file

    if model_path is None and model_name in P.model_paths:
        model_path = params_path(P.model_paths[model_name])
    blob = json.dumps(
        {"sft": dataclasses.asdict(P.sft), "seed": P.seed}, sort_keys=True, default=str
    )
    return {
        "train_sha256": sha256_file(P.run_dir / TRAIN_FILE),
        "sft_params_sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest(),
        **base_identity(model_name, model_path),
    }


IDENTITY_PARTS = {
    "train_sha256": "training data",
    "sft_params_sha256": "sft params",
    "base_model": "base model",
    "weights_sha256": "base weights",
    "weights_hub": "base weights",
    "model_spec_sha256": "model's template and tokens",
}


def _stale(ckpt_dir: Path, ident: dict) -> str | None:
    """Why the checkpoints under ckpt_dir cannot be resumed for this identity (None when they can)."""
    f = Path(ckpt_dir) / IDENTITY_FILE
    if not f.exists():
        return f"its checkpoints record no {IDENTITY_FILE} (training data and params unknown)"
    old = json.loads(f.read_text(encoding="utf-8"))
    changed = list(
        dict.fromkeys(IDENTITY_PARTS[k] for k in {*ident, *old} if old.get(k) != ident.get(k))
    )
    return f"the {' and the '.join(changed)} changed since its checkpoints" if changed else None
