"""`data list` / `data fetch` against a mirror on 127.0.0.1 that serves the hosts' own layouts:
raw GitHub files, GitHub archives, ModelScope's dataset API and Hugging Face resolve URLs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mi_llm.data import corpora, fetch, sources
from mi_llm.data.sources import File, Source

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
REV = "0123456789abcdef0123456789abcdef01234567"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------- the mirror
class Mirror:
    """Files by URL path (and ModelScope datasets by repo), Range requests, optional throttle."""

    def __init__(self):
        self.files: dict[str, bytes] = {}  # "/host/path" -> bytes
        self.modelscope: dict[str, dict[str, bytes]] = {}  # "owner/name" -> {FilePath: bytes}
        self.requests: list[tuple[str, str | None]] = []  # (path?query, Range header)
        self.delay = 0.0  # seconds per 64 kB chunk

    def lookup(self, raw: str):
        u = urlsplit(raw)
        path, q = unquote(u.path), parse_qs(u.query)
        ms = "/www.modelscope.cn/api/v1/datasets/"
        if path.startswith(ms):
            repo, _, rest = path[len(ms) :].partition("/repo")
            files = self.modelscope.get(repo)
            if files is None or q.get("Revision") != ["master"]:
                return None
            if rest == "/tree":
                listing = [
                    {"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(b)}
                    for p, b in files.items()
                ]
                listing.append({"Name": "sub", "Path": "sub", "Type": "tree", "Size": 0})
                return json.dumps({"Code": 200, "Data": {"Files": listing}}).encode()
            return files.get(q.get("FilePath", [""])[0]) if rest == "" else None
        return self.files.get(path)


def _handler(mirror: Mirror):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            mirror.requests.append((self.path, rng))
            body = mirror.lookup(self.path)
            if body is None:
                self.send_error(404)
                return
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            if start >= len(body) and rng:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            try:
                for i in range(start, len(body), 1 << 16):
                    self.wfile.write(body[i : i + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(mirror.delay)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return H


@pytest.fixture
def mirror(monkeypatch):
    m = Mirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(m))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    m.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(fetch.MIRROR_ENV, m.url)
    yield m
    server.shutdown()
    server.server_close()


def _tar(top: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, body in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return gzip.compress(buf.getvalue())


def _manifest_sha(files: dict[str, bytes]) -> str:
    """The folder digest as `sha256sum` would list it (LC_ALL=C order), computed here."""
    lines = "".join(
        f"{sha(b)}  {p}\n" for p, b in sorted(files.items(), key=lambda x: x[0].encode())
    )
    return sha(lines.encode())


def _folder(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- registry
def test_data_list_names_every_corpus_with_pins():
    r = subprocess.run(
        [sys.executable, "-m", "mi_llm", "data", "list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in [*corpora.NAMES, "mi_gold"]:  # every loadable corpus and the MI gold sentences
        assert f"\n{name}: " in "\n" + r.stdout
    assert "CAS-SIAT-XinHai/CPsyCoun" in r.stdout and "YIRONGCHEN/PsyDTCorpus" in r.stdout
    assert "1954f2e2d01d3b0f568e1673a525a6d3d9a34c03" in r.stdout
    assert "CC BY-NC-SA 3.0" in r.stdout and "3,084 files" in r.stdout
    for s in sources.SOURCES.values():
        for f in s.files:
            assert (f.sha256 or "pinned in LOCK.json") in r.stdout


def test_registry_pins_match_the_shipped_byte_identical_copies():
    """The shipped AnnoMI, MI Gold and LICENSE files are byte-identical copies of the pinned
    repository files, so their sha256 computed here must equal the registry's."""
    shipped = {
        ("annomi", "AnnoMI-simple.csv"): DATA / "AnnoMI/AnnoMI-simple.csv",
        ("annomi", "AnnoMI-full.csv"): DATA / "AnnoMI/AnnoMI-full.csv",
        ("mi_gold", "Software/MI Classifier/output/mi_gold/test_output.csv"): DATA
        / "MI_Welivita_Pu_gold_test/test_output.csv",
        ("mi_gold", "Software/MI Classifier/ebp_labels.txt"): DATA
        / "MI_Welivita_Pu_gold_test/ebp_labels.txt",
        ("cpsycound", "LICENSE"): DATA / "CPsyCounD/LICENSE",
        ("smilechat", "LICENSE"): DATA / "SmileChat/LICENSE",
    }
    for (name, path), local in shipped.items():
        (f,) = [f for f in sources.SOURCES[name].files if f.path == path]
        body = local.read_bytes()
        assert (f.sha256, f.size) == (sha(body), len(body)), (name, path)


def test_urls_follow_each_hosts_layout(monkeypatch):
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    a = sources.SOURCES["annomi"]
    assert fetch.file_url(a, "AnnoMI-simple.csv", a.revision) == (
        f"https://raw.githubusercontent.com/uccollab/AnnoMI/{a.revision}/AnnoMI-simple.csv"
    )
    g = sources.SOURCES["mi_gold"]
    assert fetch.file_url(g, "Data/MI Gold Dataset/MI_Dataset.csv", "c").endswith(
        "/c/Data/MI%20Gold%20Dataset/MI_Dataset.csv"
    )
    assert fetch.archive_url(sources.SOURCES["cpsycound"]) == (
        "https://codeload.github.com/CAS-SIAT-XinHai/CPsyCoun/tar.gz/"
        "1954f2e2d01d3b0f568e1673a525a6d3d9a34c03"
    )
    p = sources.SOURCES["psydtcorpus"]
    assert fetch.file_url(p, "a b.json", "master") == (
        "https://www.modelscope.cn/api/v1/datasets/YIRONGCHEN/PsyDTCorpus/repo?Source=SDK"
        "&Revision=master&FilePath=a%20b.json"
    )
    hub = Source("h", "h", "hub", "org/ds", REV, (), "x", "x")
    assert fetch.file_url(hub, "d/x.json", REV) == (
        f"https://huggingface.co/datasets/org/ds/resolve/{REV}/d/x.json"
    )
    url = "https://www.modelscope.cn/api/v1/datasets/o/n/repo?Revision=master&FilePath=x"
    assert fetch.mirrored(url) == url
    monkeypatch.setenv(fetch.MIRROR_ENV, "http://127.0.0.1:9/m/")
    assert fetch.mirrored(url) == (
        "http://127.0.0.1:9/m/www.modelscope.cn/api/v1/datasets/o/n/repo?Revision=master&FilePath=x"
    )


# ----------------------------------------------------------------------------- fetching
@pytest.fixture
def hosted(mirror):
    """A registry of four sources (GitHub files + a folder, ModelScope listed and named, the Hub)
    built from the shipped data, served by the mirror; AnnoMI is the real registry entry."""
    cpsy = {f"CPsyCounD/Data/{k}": v for k, v in _folder(DATA / "CPsyCounD/Data").items()}
    mirror.files[f"/codeload.github.com/o/cpsy/tar.gz/{REV}"] = _tar(
        f"cpsy-{REV}", {**cpsy, "README.md": b"top", "CPsyCounD/README.md": b"# D\n"}
    )
    mirror.files[f"/raw.githubusercontent.com/o/cpsy/{REV}/LICENSE"] = b"CC BY 4.0 text"
    a = sources.SOURCES["annomi"]
    for f in a.files:
        mirror.files[f"/raw.githubusercontent.com/uccollab/AnnoMI/{a.revision}/{f.path}"] = (
            DATA / "AnnoMI" / f.path
        ).read_bytes()
    psydt = (DATA / "PsyDTCorpus/PsyDTCorpus_sample.json").read_bytes()
    mirror.modelscope["o/psydt"] = {"PsyDTCorpus_train_mulit_turn_packing.json": psydt}
    soul = (DATA / "SoulChatCorpus/SoulChatCorpus_sample.json").read_bytes()
    mirror.modelscope["o/soul"] = {"sub/soul.json": soul, "README.md": b"card"}
    smile = {f"data/{n}.json": (DATA / f"SmileChat/data/{n}.json").read_bytes() for n in (0, 1, 2)}
    for p, b in smile.items():
        mirror.files[f"/huggingface.co/datasets/o/smile/resolve/{REV}/{p}"] = b
    folder_files = {k[len("CPsyCounD/") :]: v for k, v in cpsy.items()}
    folder_files["README.md"] = b"# D\n"
    reg = {
        "cpsycound": Source(
            "cpsycound",
            "t",
            "github",
            "o/cpsy",
            REV,
            (
                File(
                    "CPsyCounD",
                    _manifest_sha(folder_files),
                    sum(map(len, folder_files.values())),
                    len(folder_files),
                ),
                File("LICENSE", sha(b"CC BY 4.0 text"), 14),
            ),
            "CC BY 4.0",
            "p",
            "cpsycound",
            "CPsyCounD/Data",
        ),
        "annomi": a,
        "psydtcorpus": Source(
            "psydtcorpus",
            "t",
            "modelscope",
            "o/psydt",
            None,
            (File("PsyDTCorpus_train_mulit_turn_packing.json", None, None),),
            "x",
            "p",
            "psydtcorpus",
            "PsyDTCorpus_train_mulit_turn_packing.json",
        ),
        "soulchatcorpus": Source(
            "soulchatcorpus",
            "t",
            "modelscope",
            "o/soul",
            None,
            (),
            "x",
            "p",
            "soulchatcorpus",
            ".",
            patterns=("*.json",),
        ),
        "smilechat": Source(
            "smilechat",
            "t",
            "hub",
            "o/smile",
            REV,
            tuple(File(p, sha(b), len(b)) for p, b in smile.items()),
            "CC0",
            "p",
            "smilechat",
            "data",
        ),
    }
    return reg, {"psydt": psydt, "soul": soul, "cpsy": cpsy}


def test_fetch_pins_writes_provenance_and_the_loaders_read_it(tmp_path, hosted):
    reg, raw = hosted
    done = fetch.fetch(dest=tmp_path, sources=reg)
    assert set(done) == set(reg)
    for name, s in reg.items():
        prov = json.loads((tmp_path / name / "PROVENANCE.json").read_text())
        assert prov["fixture"] is False and prov["repo"] == s.repo
        path = tmp_path / name / s.load_path
        assert corpora.provenance(path)["corpus"] == name and not corpora.is_fixture(path)
    assert len(corpora.load("cpsycound", tmp_path / "cpsycound/CPsyCounD/Data")) == 120
    assert len(corpora.load("annomi", tmp_path / "annomi")) == 133
    assert (
        len(
            corpora.load(
                "psydtcorpus",
                tmp_path / "psydtcorpus" / "PsyDTCorpus_train_mulit_turn_packing.json",
            )
        )
        == 8
    )
    assert len(corpora.load("soulchatcorpus", tmp_path / "soulchatcorpus")) == 8
    assert len(corpora.load("smilechat", tmp_path / "smilechat/data")) == 3
    assert not (tmp_path / "soulchatcorpus/README.md").exists()  # only the patterns' files
    lock = json.loads((tmp_path / "LOCK.json").read_text())
    assert set(lock) == {"psydtcorpus", "soulchatcorpus"}  # only what the registry cannot pin
    assert lock["psydtcorpus"] == {
        "revision": "master",
        "files": {
            "PsyDTCorpus_train_mulit_turn_packing.json": {
                "sha256": sha(raw["psydt"]),
                "size": len(raw["psydt"]),
            }
        },
    }
    assert lock["soulchatcorpus"]["files"] == {
        "sub/soul.json": {"sha256": sha(raw["soul"]), "size": len(raw["soul"])}
    }


def test_second_fetch_downloads_nothing(tmp_path, hosted, mirror):
    reg, _ = hosted
    fetch.fetch(dest=tmp_path, sources=reg)
    before = len(mirror.requests)
    fetch.fetch(dest=tmp_path, sources=reg)
    assert len(mirror.requests) == before


def test_lock_file_pins_unknown_hashes_for_later_fetches(tmp_path, hosted, mirror):
    reg, raw = hosted
    fetch.fetch(["psydtcorpus"], dest=tmp_path, sources=reg)
    target = tmp_path / "psydtcorpus/PsyDTCorpus_train_mulit_turn_packing.json"
    # the host now serves other bytes under the same name: the lock refuses them
    target.unlink()
    mirror.modelscope["o/psydt"]["PsyDTCorpus_train_mulit_turn_packing.json"] = raw["soul"]
    with pytest.raises(fetch.FetchError, match="checksum mismatch") as e:
        fetch.fetch(["psydtcorpus"], dest=tmp_path, sources=reg)
    assert sha(raw["psydt"]) in str(e.value) and sha(raw["soul"]) in str(e.value)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    # a file changed in place is caught too
    target.write_bytes(raw["psydt"][:-1])
    with pytest.raises(fetch.FetchError, match="differs from the pin"):
        fetch.fetch(["psydtcorpus"], dest=tmp_path, sources=reg)
    # the lock's own bytes verify
    target.write_bytes(raw["psydt"])
    assert fetch.fetch(["psydtcorpus"], dest=tmp_path, sources=reg)


def test_checksum_mismatch_leaves_no_file(tmp_path, mirror):
    a = sources.SOURCES["annomi"]
    real = (DATA / "AnnoMI/AnnoMI-simple.csv").read_bytes()
    bad = real.replace(b"high", b"HIGH", 1)
    mirror.files[f"/raw.githubusercontent.com/uccollab/AnnoMI/{a.revision}/AnnoMI-simple.csv"] = bad
    with pytest.raises(fetch.FetchError, match="checksum mismatch") as e:
        fetch.fetch(["annomi"], dest=tmp_path)
    assert sha(bad) in str(e.value) and a.files[0].sha256 in str(e.value)
    assert "AnnoMI-simple.csv" in str(e.value)
    assert not any((tmp_path / "annomi").iterdir())
    assert not (tmp_path / "annomi/PROVENANCE.json").exists()


def test_tampered_folder_in_archive_leaves_nothing(tmp_path, hosted, mirror):
    reg, raw = hosted
    cpsy = dict(raw["cpsy"])
    cpsy["CPsyCounD/Data/case_0.txt"] += b"\r\nextra"
    mirror.files[f"/codeload.github.com/o/cpsy/tar.gz/{REV}"] = _tar(
        f"cpsy-{REV}", {**cpsy, "CPsyCounD/README.md": b"# D\n"}
    )
    with pytest.raises(fetch.FetchError, match="checksum mismatch.*tree sha256"):
        fetch.fetch(["cpsycound"], dest=tmp_path, sources=reg)
    assert not (tmp_path / "cpsycound/CPsyCounD").exists()
    assert not (tmp_path / "cpsycound/CPsyCounD.partial").exists()


def test_missing_file_is_a_clear_error(tmp_path, mirror):
    with pytest.raises(fetch.FetchError, match="not found.*404") as e:
        fetch.fetch(["annomi"], dest=tmp_path)  # the mirror holds nothing
    assert "raw.githubusercontent.com/uccollab/AnnoMI" in str(e.value)
    assert str(tmp_path / "annomi" / "AnnoMI-simple.csv") in str(e.value)


def test_without_network_it_names_each_url_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.MIRROR_ENV, "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(fetch.FetchError, match="by hand") as e:
        fetch.fetch(["annomi", "cpsycound"], dest=tmp_path)
    msg = str(e.value)
    a = sources.SOURCES["annomi"]
    for f in a.files:
        assert f"raw.githubusercontent.com/uccollab/AnnoMI/{a.revision}/{f.path}" in msg
        assert str(tmp_path / "annomi" / f.path) in msg
    assert "codeload.github.com/CAS-SIAT-XinHai/CPsyCoun/tar.gz/" in msg
    assert str(tmp_path / ".archives") in msg
    # put by hand where it says: the next fetch verifies and accepts them
    for f in a.files:
        (tmp_path / "annomi" / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "annomi" / f.path).write_bytes((DATA / "AnnoMI" / f.path).read_bytes())
    assert "annomi" in fetch.fetch(["annomi"], dest=tmp_path)


def test_killed_download_resumes_where_it_stopped(tmp_path, mirror):
    """A `data fetch` process killed mid-download leaves a .part; the next fetch asks the host
    for the rest only (an HTTP Range request) and the file verifies against the registry pin."""
    a = sources.SOURCES["annomi"]
    for f in a.files:
        mirror.files[f"/raw.githubusercontent.com/uccollab/AnnoMI/{a.revision}/{f.path}"] = (
            DATA / "AnnoMI" / f.path
        ).read_bytes()
    mirror.delay = 0.1  # ~0.65 MB/s: AnnoMI-simple.csv (2.4 MB) takes about 4 s
    env = {**os.environ, fetch.MIRROR_ENV: mirror.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mi_llm", "data", "fetch", "annomi", "--dest", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    part = tmp_path / "annomi" / "AnnoMI-simple.csv.part"
    deadline = time.time() + 60
    while time.time() < deadline and not (part.exists() and part.stat().st_size > 300_000):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    have = part.stat().st_size
    assert 300_000 <= have < a.files[0].size
    mirror.delay = 0.0
    mirror.requests.clear()
    fetch.fetch(["annomi"], dest=tmp_path)
    first = mirror.requests[0]
    assert first[0].endswith("/AnnoMI-simple.csv") and first[1] == f"bytes={have}-"
    assert sources.file_sha256(tmp_path / "annomi/AnnoMI-simple.csv") == a.files[0].sha256
    assert not part.exists()
