"""One download from a host that is not trusted: redirects only within the allowed hosts, a size
cap, no HTML page taken for data, a checksum before anything is moved into place, resumption of a
partial download, and paths that stay under their folder (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx
from tqdm.auto import tqdm

from mi_llm.data.sources import file_sha256

MAX_BYTES_ENV = "MI_LLM_DATA_MAX_BYTES"
MAX_BYTES = 4_000_000_000  # no download is larger (a pinned size is the cap below it)
MAX_REDIRECTS = 5


class FetchError(RuntimeError):
    """A download failed or did not match its pin; the message says which and what to do."""


class _Offline(Exception):  # the host could not be reached at all
    pass


def _host_ok(url: str, allowed: tuple[str, ...]) -> bool:
    """An allowed host: a site name (the host or a subdomain of it), or host:port exactly."""
    u = urlsplit(url)
    host, netloc = (u.hostname or "").lower(), u.netloc.lower().rpartition("@")[2]
    return any(netloc == a if ":" in a else host == a or host.endswith("." + a) for a in allowed)


def max_bytes() -> int:
    """The size cap of a download without a pinned size ($MI_LLM_DATA_MAX_BYTES, bytes)."""
    raw = os.environ.get(MAX_BYTES_ENV)
    try:
        n = int(raw) if raw else MAX_BYTES
    except ValueError:
        raise FetchError(f"${MAX_BYTES_ENV}={raw!r}: not a whole number of bytes") from None
    if n <= 0:
        raise FetchError(f"${MAX_BYTES_ENV}={raw!r}: must be a positive number of bytes")
    return n


def safe_target(root: Path, rel: str, where: str) -> Path:
    """root/rel, refused (FetchError naming `where`) unless rel is a plain relative path that
    stays under root: no absolute path, no `..`, no backslash or NUL, no empty part."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if (
        p is None
        or not rel
        or p.is_absolute()
        or ".." in p.parts
        or "\\" in rel
        or "\0" in rel
        or re.match(r"^[A-Za-z]:", rel)
        or any(part in ("", ".") for part in rel.split("/"))
    ):
        raise FetchError(
            f"{where}: path {rel!r} is not a relative path inside the corpus folder; refused, "
            "nothing was written for it"
        )
    target = Path(root) / p
    if not target.resolve().is_relative_to(Path(root).resolve()):
        raise FetchError(f"{where}: path {rel!r} leads outside {root} (a link?); refused")
    return target


# ----------------------------------------------------------------------------- one download
def _is_html(ctype: str, head: bytes) -> bool:
    """A web page rather than data: served as text/html, or starting like one."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:15].lower()
    return ctype.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml") or (
        start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))
    )


@contextlib.contextmanager
def _get(client: httpx.Client, url: str, allowed: tuple[str, ...], headers=None):
    """GET url as a stream, following redirects only to the allowed hosts; yields the response."""
    for _ in range(MAX_REDIRECTS + 1):
        req = client.build_request("GET", url, headers=headers or {})
        r = client.send(req, stream=True, follow_redirects=False)
        if not r.is_redirect:
            try:
                yield r
            finally:
                r.close()
            return
        nxt = str(r.url.join(r.headers.get("location", "")))
        r.close()
        if not _host_ok(nxt, allowed):
            raise FetchError(
                f"{url}: redirected to {nxt}, off the source's host ({', '.join(allowed)}); "
                "refused, nothing was downloaded from there"
            )
        url = nxt
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects; refused")


def _refuse(part: Path, msg: str) -> FetchError:
    part.unlink(missing_ok=True)
    return FetchError(f"{msg}; the partial download {part} was deleted")


def download(
    client: httpx.Client,
    url: str,
    target: Path,
    sha256: str | None = None,
    size: int | None = None,
    desc: str = "",
    allowed: tuple[str, ...] | None = None,
) -> tuple[str, int]:
    """Download url to target via target.part, resuming a partial one; (sha256, size).

    A sha256 or size other than the expected one deletes the partial file and raises FetchError;
    nothing is then left at target. So does a body past `size` (else max_bytes()), an HTML page,
    or a redirect off the allowed hosts (default: the URL's own host).
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    cap = max_bytes() if size is None else min(size, max_bytes())
    allowed = allowed or (urlsplit(url).netloc.lower(),)
    have = part.stat().st_size if part.exists() else 0
    if have > cap:
        raise _refuse(part, f"{part}: {have:,} bytes, more than the {cap:,} expected")
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with _get(client, url, allowed, headers) as r:
            if r.status_code == 416 and have:
                pass  # the partial file is already whole
            elif r.status_code == 404:
                raise FetchError(
                    f"{url}: not found (HTTP 404); the source has no such file "
                    f"(wanted for {target})"
                )
            elif r.status_code >= 400:
                raise FetchError(f"{url}: HTTP {r.status_code} (wanted for {target})")
            else:
                _receive(r, url, target, part, have, cap, desc)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise _Offline(str(e)) from e
    except httpx.TransportError as e:
        got = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"{url}: interrupted after {got:,} bytes ({e}); run the same fetch "
            f"again to resume from {part}"
        ) from e
    got_sha, got_size = file_sha256(part), part.stat().st_size
    if (sha256 and got_sha != sha256) or (size is not None and got_size != size):
        part.unlink()
        raise FetchError(
            f"checksum mismatch for {target} from {url}: got sha256 {got_sha} ({got_size:,} "
            f"bytes), expected {sha256 or 'any'} ({'?' if size is None else f'{size:,}'} bytes); "
            "the download was deleted"
        )
    part.replace(target)
    return got_sha, got_size


def _receive(r, url: str, target: Path, part: Path, have: int, cap: int, desc: str) -> None:
    """Write a 200/206 response's body to part (appending to a resumed one), within cap bytes."""
    resumed = r.status_code == 206 and r.headers.get("content-range", "").startswith(
        f"bytes {have}-"
    )
    start = have if resumed else 0
    length = int(r.headers.get("content-length") or 0)
    what = f"{url} (for {target})"
    if start + length > cap:
        raise _refuse(part, f"{what}: announces {start + length:,} bytes, more than {cap:,}")
    ctype, first = r.headers.get("content-type", ""), True
    with (
        open(part, "ab" if resumed else "wb") as out,
        tqdm(
            total=start + length or None,
            initial=start,
            unit="B",
            unit_scale=True,
            desc=desc or target.name,
            leave=False,
        ) as bar,
    ):
        got = start
        for chunk in r.iter_bytes(1 << 16):
            if first and not resumed and _is_html(ctype, chunk):
                out.close()
                raise _refuse(part, f"{what}: an HTML page ({ctype or 'no type'}), not the file")
            first = False
            got += len(chunk)
            if got > cap:
                out.close()
                raise _refuse(part, f"{what}: stopped past {cap:,} bytes, more than expected")
            out.write(chunk)
            bar.update(len(chunk))
