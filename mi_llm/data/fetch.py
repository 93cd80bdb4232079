"""`python -m mi_llm data fetch [NAMES] [--dest data/full]`: download the corpora of mi_llm.data.sources.

Every file lands at `<dest>/<name>/<path in the source>`; a GitHub folder is taken from the
repository's archive at the pinned commit (kept in `<dest>/.archives/`). Downloads go to `*.part`
and resume from there (an HTTP Range request) when a fetch is interrupted; a file is moved into
place only once its sha256 matches the pin (the registry's, or LOCK.json's), else the partial
file is deleted and the error names file, URL and both hashes. What the registry cannot pin is
pinned here in `<dest>/LOCK.json` on the first fetch and verified on every later one. Each corpus
gets a `PROVENANCE.json` (source, revision, files, hashes, license; `"fixture": false`).

Hosts: GitHub files over plain HTTPS (raw.githubusercontent.com, codeload.github.com for
archives), ModelScope datasets through its HTTP API, Hugging Face Hub datasets at the URLs
`huggingface_hub` resolves. `MI_LLM_DATA_MIRROR=<base URL>` sends every request to
`<base>/<host>/<path>?<query>` instead (a mirror; the tests serve one on 127.0.0.1). Without a
network, the fetch names each URL to download by hand and the path to put it at; the next fetch
verifies what was put there.

What a host serves is untrusted input (docs/reliability.md): every path, whether from the registry,
LOCK.json or a host's file list, must stay under `<dest>/<name>/`; a download stops at its pinned
size, else at `$MI_LLM_DATA_MAX_BYTES` (default 4 GB); an HTML page is refused (a proxy's or a
login page served with 200 is never pinned); redirects are followed only on the source's own site
(or, with a mirror, the mirror's host); whatever a refusal leaves half done is deleted and the
message says so.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from mi_llm.data.download import FetchError, _get, _Offline, download, safe_target
from mi_llm.data.sources import DEFAULT_DEST, NAMES, SOURCES, File, Source, file_sha256, tree_digest

MIRROR_ENV = "MI_LLM_DATA_MIRROR"
# the sites a source's downloads may be redirected within (the host itself or a subdomain)
SITES = {
    "github": ("github.com", "githubusercontent.com"),
    "modelscope": ("modelscope.cn",),
    "hub": ("huggingface.co", "hf.co"),
}
LOCK = "LOCK.json"
DEFAULT_BRANCH = {"modelscope": "master", "hub": "main"}


@dataclass
class Manual:
    """A download to do by hand: fetch `url`, put the bytes at `target`."""

    url: str
    target: Path
    what: str = ""


# ----------------------------------------------------------------------------- URLs
def mirrored(url: str) -> str:
    """The URL itself, or its copy under $MI_LLM_DATA_MIRROR/<host>/<path>?<query>."""
    base = os.environ.get(MIRROR_ENV)
    if not base:
        return url
    u = urlsplit(url)
    return f"{base.rstrip('/')}/{u.netloc}{u.path}" + (f"?{u.query}" if u.query else "")


def file_url(s: Source, path: str, revision: str) -> str:
    """Where one file of a source is downloaded from (before mirroring)."""
    if s.kind == "github":
        return f"https://raw.githubusercontent.com/{s.repo}/{revision}/{quote(path)}"
    if s.kind == "modelscope":
        return (
            f"https://www.modelscope.cn/api/v1/datasets/{s.repo}/repo?Source=SDK"
            f"&Revision={quote(revision, safe='')}&FilePath={quote(path, safe='')}"
        )
    if s.kind == "hub":
        from huggingface_hub import hf_hub_url

        return hf_hub_url(s.repo, path, repo_type="dataset", revision=revision)
    raise ValueError(f"source {s.name}: unknown kind {s.kind!r}")


def archive_url(s: Source) -> str:
    """The GitHub archive (tar.gz) of the source's repository at its commit."""
    return f"https://codeload.github.com/{s.repo}/tar.gz/{s.revision}"


def list_url(s: Source, revision: str) -> str:
    """ModelScope's file list of a dataset at a revision (JSON: Data.Files[].Path/Type/Size)."""
    return (
        f"https://www.modelscope.cn/api/v1/datasets/{s.repo}/repo/tree?Revision="
        f"{quote(revision, safe='')}&Root=&Recursive=True&PageNumber=1&PageSize=10000"
    )


def allowed_hosts(s: Source) -> tuple[str, ...]:
    """Hosts a download of this source may be redirected to: the mirror's alone when one is set,
    else the source's site (a host or any of its subdomains)."""
    base = os.environ.get(MIRROR_ENV)
    return (urlsplit(base).netloc.lower(),) if base else SITES[s.kind]


def _archive_path(dest: Path, s: Source) -> Path:
    return dest / ".archives" / f"{s.repo.replace('/', '+')}-{s.revision}.tar.gz"


# ----------------------------------------------------------------------------- lock file
def read_lock(dest: Path) -> dict:
    f = Path(dest) / LOCK
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FetchError(f"{f}: not valid JSON ({e}); restore it or delete it to pin anew") from e


def write_lock(dest: Path, lock: dict) -> None:
    f = Path(dest) / LOCK
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(f)


# ----------------------------------------------------------------------------- one source
def _verify_existing(target: Path, pin: str | None, pinned_by: str) -> str:
    sha = file_sha256(target)
    if pin and sha != pin:
        raise FetchError(
            f"{target}: sha256 {sha} differs from the pin {pin} ({pinned_by}); "
            "delete the file and fetch again"
        )
    return sha


def _extract(archive: Path, folder_in_repo: str, out: Path) -> None:
    """Write the archive's files under <top>/<folder_in_repo>/ into out (regular files only).

    A refused or unreadable archive is deleted, with whatever was extracted, and the message
    says so: the next fetch downloads it again instead of failing the same way.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            prefix = None
            for m in tar:
                if prefix is None:
                    prefix = f"{m.name.split('/')[0]}/{folder_in_repo.strip('/')}/"
                if not (m.isfile() and m.name.startswith(prefix)):
                    continue
                dst = safe_target(out, m.name[len(prefix) :], f"{archive}: member {m.name!r}")
                dst.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(dst, "wb") as f:
                    shutil.copyfileobj(src, f)
    except (FetchError, tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(out, ignore_errors=True)
        archive.unlink(missing_ok=True)
        why = str(e) if isinstance(e, FetchError) else f"{archive}: unreadable archive ({e})"
        raise FetchError(
            f"{why}; the archive and {out} were deleted; fetch again to download it anew"
        ) from e


def _tree(client, s: Source, f: File, dest: Path, manual: list) -> dict | None:
    folder = safe_target(dest / s.name, f.path, f"source {s.name}")
    record = {
        "path": f.path,
        "n_files": f.n_files,
        "size": f.size,
        "sha256": f.sha256,
        "url": archive_url(s),
        "pinned_by": "registry (tree digest)",
    }
    if folder.exists():
        digest, n, total = tree_digest(folder)
        if digest != f.sha256:
            raise FetchError(
                f"{folder}: its files differ from the pinned folder (tree sha256 "
                f"{digest}, {n:,} files; pinned {f.sha256}, {f.n_files:,} files); "
                "delete the folder and fetch again"
            )
        return record
    archive = _archive_path(dest, s)
    url = mirrored(archive_url(s))
    if not archive.exists():
        try:
            download(
                client, url, archive, desc=f"{s.name}: {s.repo} archive", allowed=allowed_hosts(s)
            )
        except _Offline:
            manual.append(
                Manual(url, archive, f"the repository archive; fetch takes {f.path}/ from it")
            )
            return None
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _extract(archive, f.path, tmp)
    digest, n, total = tree_digest(tmp) if tmp.exists() else ("(nothing)", 0, 0)
    if digest != f.sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise FetchError(
            f"checksum mismatch for {folder} from {archive}: tree sha256 {digest} "
            f"({n:,} files, {total:,} bytes), expected {f.sha256} ({f.n_files:,} "
            f"files, {f.size:,} bytes); nothing was left in place (the archive and "
            f"{tmp.name} were deleted)"
        )
    tmp.rename(folder)
    return record


def _file(
    client, s: Source, f: File, revision: str, dest: Path, locked: dict, manual: list
) -> dict | None:
    target = safe_target(dest / s.name, f.path, f"source {s.name}")
    pin = f.sha256 or locked.get(f.path, {}).get("sha256")
    pinned_by = "registry" if f.sha256 else ("LOCK.json" if pin else "LOCK.json (this fetch)")
    url = mirrored(file_url(s, f.path, revision))
    if target.exists():
        sha, size = _verify_existing(target, pin, pinned_by), target.stat().st_size
    else:
        try:
            sha, size = download(
                client,
                url,
                target,
                pin,
                f.size or locked.get(f.path, {}).get("size"),
                desc=f"{s.name}: {f.path}",
                allowed=allowed_hosts(s),
            )
        except _Offline:
            manual.append(Manual(url, target))
            return None
    if not f.sha256:
        locked[f.path] = {"sha256": sha, "size": size}
    return {"path": f.path, "sha256": sha, "size": size, "url": url, "pinned_by": pinned_by}


def _listed(client, s: Source, revision: str, dest: Path, locked: dict, manual: list) -> list:
    """The files of a source without a file list: LOCK.json's, else the host's list, else the
    files already put in its folder by hand."""
    if locked:
        for p in locked:
            safe_target(dest / s.name, p, f"{dest / LOCK}: {s.name}.files")
        return [File(p, v["sha256"], v["size"]) for p, v in sorted(locked.items())]
    if s.kind != "modelscope":
        raise FetchError(f"source {s.name}: no files listed and {s.kind} listing is not supported")
    url = mirrored(list_url(s, revision))
    try:
        with _get(client, url, allowed_hosts(s)) as r:
            r.read()
    except (httpx.ConnectError, httpx.ConnectTimeout):
        here = sorted(p for pat in s.patterns for p in (dest / s.name).rglob(pat) if p.is_file())
        if here:
            return [File(p.relative_to(dest / s.name).as_posix(), None, None) for p in here]
        manual.append(
            Manual(
                s.page,
                dest / s.name,
                f"every {' / '.join(s.patterns)} file of the "
                "dataset (its file list could not be read)",
            )
        )
        return []
    if r.status_code != 200:
        raise FetchError(f"{url}: HTTP {r.status_code} listing the files of {s.repo}")
    try:
        entries = r.json()["Data"]["Files"]
    except (ValueError, KeyError, TypeError) as e:
        raise FetchError(f"{url}: unexpected file list ({e}); expected JSON Data.Files") from e
    files = []
    for i, e in enumerate(entries):
        where = f"{url}: Data.Files[{i}].Path"
        if not isinstance(e, dict) or not isinstance(e.get("Path"), str):
            raise FetchError(f"{where}: missing or not a string; refused the file list")
        if e.get("Type") == "tree" or not any(
            fnmatch.fnmatch(e["Path"].rsplit("/", 1)[-1], p) for p in s.patterns
        ):
            continue
        safe_target(dest / s.name, e["Path"], where)  # a hostile list names no path outside
        size = e.get("Size")
        files.append(File(e["Path"], e.get("Sha256") or None, size if type(size) is int else None))
    if not files:
        raise FetchError(f"{url}: the dataset lists no {' / '.join(s.patterns)} file")
    return files


def fetch_source(client, s: Source, dest: Path, lock: dict, manual: list) -> Path | None:
    """Fetch one source into dest/<name>/; its PROVENANCE.json, or None while files are missing."""
    entry = lock.setdefault(s.name, {})
    revision = s.revision or entry.get("revision") or DEFAULT_BRANCH[s.kind]
    locked = entry.setdefault("files", {})
    n_manual = len(manual)
    files = list(s.files) or _listed(client, s, revision, dest, locked, manual)
    records = []
    for f in files:
        rec = (
            _tree(client, s, f, dest, manual)
            if f.n_files
            else _file(client, s, f, revision, dest, locked, manual)
        )
        if rec:
            records.append(rec)
    if not s.revision:
        entry["revision"] = revision
    if not locked:
        entry.pop("files")
    if not entry:
        lock.pop(s.name, None)
    if len(manual) > n_manual or not files:
        return None
    prov = {
        "corpus": s.name,
        "title": s.title,
        "fixture": False,
        "kind": s.kind,
        "repo": s.repo,
        "revision": revision,
        "revision_pinned_by": "registry" if s.revision else "LOCK.json",
        "page": s.page,
        "license": s.license,
        "loader": s.loader,
        "load_path": s.load_path,
        "fetched": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": records,
    }
    out = dest / s.name / "PROVENANCE.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prov, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def fetch(
    names=None,
    dest=DEFAULT_DEST,
    sources: dict[str, Source] | None = None,
    client: httpx.Client | None = None,
) -> dict[str, Path]:
    """Fetch the named sources (all by default) into dest; {name: its PROVENANCE.json}.

    Raises FetchError listing every URL to download by hand when hosts cannot be reached (after
    fetching and pinning all that could be).
    """
    from mi_llm.params import path

    sources = SOURCES if sources is None else sources
    names = list(names or sources)
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise FetchError(f"unknown corpus {', '.join(unknown)}; known: {', '.join(sources)}")
    dest = path(dest)
    lock, manual, done = read_lock(dest), [], {}
    own = client is None
    client = client or httpx.Client(
        follow_redirects=True,
        headers={"User-Agent": "mi-llm"},
        timeout=httpx.Timeout(30.0, read=120.0),
    )
    try:
        for n in names:
            try:
                prov = fetch_source(client, sources[n], dest, lock, manual)
            finally:
                if lock or (dest / LOCK).exists():
                    write_lock(dest, lock)
            if prov:
                done[n] = prov
    finally:
        if own:
            client.close()
    if manual:
        lines = [
            f"  {m.url}\n    -> {m.target}" + (f"  ({m.what})" if m.what else "") for m in manual
        ]
        raise FetchError(
            "could not reach the host for these downloads (no network?). Download each by hand, "
            "put it at the path shown, then run the same `python -m mi_llm data fetch` again to "
            "verify it:\n" + "\n".join(lines)
        )
    return done


# ----------------------------------------------------------------------------- command line
def cli(argv_ns) -> int:
    """`data list` / `data fetch` (argparse namespace from mi_llm.__main__)."""
    from mi_llm.data.sources import describe, load_path

    if argv_ns.data_cmd == "list":
        for n in NAMES:
            print(describe(SOURCES[n], argv_ns.dest) + "\n")
        return 0
    try:
        done = fetch(argv_ns.names, argv_ns.dest)
    except FetchError as e:
        print(f"error: {e}")
        return 1
    for n, prov in done.items():
        s = SOURCES[n]
        where = f"corpora.sources.{s.loader}: {load_path(s, argv_ns.dest)}" if s.loader else ""
        print(f"{n}: verified -> {prov}" + (f"\n  {where}" if where else ""))
    return 0
