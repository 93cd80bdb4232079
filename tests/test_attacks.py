"""The study under attack, scripted: a hostile data mirror, the chat server driven as another web page
would, model answers that slip words into the client's mouth, changed base weights, hostile OpenAI
endpoints. Every server here listens on 127.0.0.1 and every request goes there; loops are bounded."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from openai_server import serve as fake_llm

from mi_llm import params
from mi_llm.chat import safety, serving, store, web
from mi_llm.data import download, fetch, transcript
from mi_llm.data.schema import Dialogue, Turn
from mi_llm.data.sources import File, Source
from mi_llm.llm import api, backoff, openai_server
from mi_llm.params import LLMParams

REV = "0123456789abcdef0123456789abcdef01234567"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------- a hostile mirror
class Hostile:
    """Serves path -> (status, headers, body); counts requests and bytes sent per path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.hits: list[str] = []
        self.sent = 0

    def start(self):
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urlsplit(self.path)
                key = unquote(u.path) + (
                    "?" + parse_qs(u.query).get("FilePath", [""])[0]
                    if "FilePath=" in u.query
                    else ""
                )
                me.hits.append(key)
                status, headers, body = me.routes.get(key, (404, {}, b"no"))
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    if v is not None:  # None: the header is left out (the body ends at close)
                        self.send_header(k, v)
                self.end_headers()
                try:
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i : i + (1 << 16)])
                        me.sent += min(1 << 16, len(body) - i)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile(monkeypatch):
    h = Hostile().start()
    monkeypatch.setenv(fetch.MIRROR_ENV, h.url)
    yield h
    h.stop()


def _ms_source(name="ms") -> Source:
    return Source(name, "t", "modelscope", "o/ds", None, (), "x", "p", patterns=("*.json",))


def _ms_list(h: Hostile, paths: list[str], size: int | None = None) -> None:
    files = [{"Path": p, "Type": "blob", **({"Size": size} if size else {})} for p in paths]
    body = json.dumps({"Data": {"Files": files}}).encode()
    h.routes["/www.modelscope.cn/api/v1/datasets/o/ds/repo/tree"] = (200, {}, body)


def _ms_file(h: Hostile, path: str, body: bytes, headers=None, status=200) -> None:
    h.routes[f"/www.modelscope.cn/api/v1/datasets/o/ds/repo?{path}"] = (status, headers or {}, body)


@pytest.mark.parametrize("evil", ["<abs>/evil.json", "../../evil.json", "a/../../evil.json"])
def test_a_file_list_cannot_write_outside_the_corpus_folder(tmp_path, hostile, evil):
    evil = evil.replace("<abs>", str(tmp_path / "outside"))  # an absolute path, inside the test's
    dest = tmp_path / "full" / "dest"
    _ms_list(hostile, ["good.json", evil])
    _ms_file(hostile, "good.json", b"[]")
    _ms_file(hostile, evil, b"[]")
    with pytest.raises(fetch.FetchError, match="not a relative path inside") as e:
        fetch.fetch(dest=dest, sources={"ms": _ms_source()})
    assert "Data.Files[1].Path" in str(e.value) and evil in str(e.value)
    assert not list(tmp_path.rglob("evil.json"))
    assert not (dest / "LOCK.json").exists() or evil not in (dest / "LOCK.json").read_text()
    assert not any("evil" in h for h in hostile.hits)  # refused before any download
    # a LOCK.json edited to name such a path is refused the same way
    dest.mkdir(parents=True, exist_ok=True)
    lock = {"ms": {"revision": "master", "files": {evil: {"sha256": sha(b"[]"), "size": 2}}}}
    (dest / "LOCK.json").write_text(json.dumps(lock))
    with pytest.raises(fetch.FetchError, match="LOCK.json.*not a relative path"):
        fetch.fetch(dest=dest, sources={"ms": _ms_source()})


def test_a_download_stops_at_its_pinned_size(tmp_path, hostile):
    big = b"x" * 5_000_000
    hostile.routes[f"/raw.githubusercontent.com/o/r/{REV}/f.csv"] = (200, {}, big)
    s = Source("gh", "t", "github", "o/r", REV, (File("f.csv", sha(b"a,b\n"), 4),), "x", "p")
    with pytest.raises(fetch.FetchError, match="more than 4") as e:
        fetch.fetch(dest=tmp_path, sources={"gh": s})
    assert "partial download" in str(e.value) and "deleted" in str(e.value)
    assert not list((tmp_path / "gh").glob("*"))
    # unpinned: the configured maximum; no Content-Length announced, the body is cut while read
    _ms_list(hostile, ["d.json"])
    _ms_file(hostile, "d.json", big, {"Content-Length": None})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MI_LLM_DATA_MAX_BYTES", "100000")
        with pytest.raises(fetch.FetchError, match="stopped past 100,000 bytes"):
            fetch.fetch(dest=tmp_path, sources={"ms": _ms_source()})
        _ms_list(hostile, ["d.json"], size=10)  # the host's own list caps it lower still
        with pytest.raises(fetch.FetchError, match="stopped past 10 bytes"):
            fetch.fetch(dest=tmp_path, sources={"ms": _ms_source()})
    assert not (tmp_path / "ms/d.json").exists() and not (tmp_path / "ms/d.json.part").exists()
    assert (
        not (tmp_path / "LOCK.json").exists()
        or "d.json" not in (tmp_path / "LOCK.json").read_text()
    )


def test_an_html_page_is_never_pinned(tmp_path, hostile):
    _ms_list(hostile, ["d.json"])
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    for headers in ({"Content-Type": "text/html; charset=utf-8"}, {}):  # labelled, or sniffed
        _ms_file(hostile, "d.json", page, headers)
        with pytest.raises(fetch.FetchError, match="HTML page"):
            fetch.fetch(dest=tmp_path, sources={"ms": _ms_source()})
        assert not (tmp_path / "ms/d.json").exists()
        lock = tmp_path / "LOCK.json"
        assert not lock.exists() or "d.json" not in lock.read_text()


def test_redirects_stay_on_the_mirror(tmp_path, hostile):
    other = Hostile().start()  # another service on this machine: not the mirror
    try:
        body = b"[1]"
        other.routes["/d.json"] = (200, {}, body)
        _ms_list(hostile, ["d.json"])
        _ms_file(hostile, "d.json", b"", {"Location": f"{other.url}/d.json"}, status=302)
        with pytest.raises(fetch.FetchError, match="redirected to .* off the source's host"):
            fetch.fetch(dest=tmp_path, sources={"ms": _ms_source()})
        assert other.hits == [] and not (tmp_path / "ms/d.json").exists()
        # a redirect on the mirror itself is followed
        hostile.routes["/moved/d.json"] = (200, {}, body)
        _ms_file(hostile, "d.json", b"", {"Location": "/moved/d.json"}, status=302)
        assert fetch.fetch(dest=tmp_path, sources={"ms": _ms_source()})
        assert (tmp_path / "ms/d.json").read_bytes() == body
    finally:
        other.stop()
    assert download._host_ok("https://cdn-lfs.huggingface.co/x", fetch.SITES["hub"])
    assert not download._host_ok("https://huggingface.co.evil.net/x", fetch.SITES["hub"])


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return gzip.compress(buf.getvalue())


def test_a_refused_archive_is_deleted_and_fetched_anew(tmp_path, hostile):
    good = {"top/D/a.txt": b"a"}
    digest = sha(f"{sha(b'a')}  a.txt\n".encode())
    s = Source("gh", "t", "github", "o/r", REV, (File("D", digest, 1, 1),), "x", "p")
    route = f"/codeload.github.com/o/r/tar.gz/{REV}"
    hostile.routes[route] = (200, {}, _tgz({**good, "top/D/../../../escape.txt": b"x"}))
    with pytest.raises(fetch.FetchError, match="not a relative path") as e:
        fetch.fetch(dest=tmp_path, sources={"gh": s})
    assert "the archive and" in str(e.value) and "were deleted" in str(e.value)
    assert not (tmp_path / "gh/D.partial").exists() and not list(tmp_path.rglob("escape.txt"))
    assert not list((tmp_path / ".archives").glob("*"))
    hostile.routes[route] = (200, {}, _tgz(good))  # the host serves a good archive again
    assert fetch.fetch(dest=tmp_path, sources={"gh": s})
    assert (tmp_path / "gh/D/a.txt").read_bytes() == b"a"


# ----------------------------------------------------------------------------- the chat
MODEL_ID = "gemma3-270m:base"  # what the chat below serves (an unknown model name is refused)


def _app_server(tmp_path, token=None, delay=0.0):
    import uvicorn

    served = serving.Served(tmp_path, "gemma3-270m", "base", tmp_path, tmp_path)
    sessions = store.Sessions(tmp_path / "chat", served.meta())

    def ask(messages, body):
        time.sleep(delay)
        return f"听起来你很在意这件事。[{len(messages)}]", "stop", {}, {}

    safety.screen("")  # the screen's encoder loaded before the server answers (as serve does)
    app = web.make_app(served, ask, sessions, token=token)
    port = api._free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    t0 = time.monotonic()
    while not server.started and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}", sessions


@pytest.fixture
def chat(tmp_path):
    server, url, sessions = _app_server(tmp_path, delay=0.02)
    yield url, sessions
    server.should_exit = True


def _say(text, history=(), **kw):
    msgs = [*history, {"role": "user", "content": text}]
    return {"model": MODEL_ID, "messages": msgs, **kw}


def _saved(sessions) -> list[Dialogue]:
    return [
        Dialogue.from_dict(json.loads(f.read_text(encoding="utf-8")))
        for f in sorted(sessions.folder.glob("*.jsonl"))
    ]


def test_other_web_pages_cannot_drive_the_chat(chat):
    url, sessions = chat
    body = json.dumps(_say("我想少喝点酒。"))
    refused = [
        ({"Origin": "http://evil.example", "Content-Type": "application/json"}, 403, "Origin"),
        ({"Origin": "null", "Content-Type": "application/json"}, 403, "Origin"),
        ({"Origin": "http://127.0.0.1:1", "Content-Type": "application/json"}, 403, "Origin"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),  # a form post needs no preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Host": "evil.example:80", "Content-Type": "application/json"}, 403, "Host"),  # rebinding
    ]
    for headers, status, word in refused:
        r = httpx.post(url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == status, (headers, r.status_code)
        assert word in r.json()["detail"], (headers, r.json())
    assert httpx.get(url + "/", headers={"Host": "attacker.test"}).status_code == 403
    assert not list(sessions.folder.glob("*.jsonl"))  # nothing was written
    same = {"Origin": url, "Content-Type": "application/json"}  # the chat's own page
    assert httpx.post(url + "/v1/chat/completions", content=body, headers=same).status_code == 200


def test_requests_are_bounded_and_bad_fields_are_400_naming_them(chat):
    url, sessions = chat
    post = lambda b: httpx.post(url + "/v1/chat/completions", json=b, timeout=30)
    big = _say("我" * 400_000)  # about 1.2 MB of UTF-8
    r = post(big)
    assert r.status_code == 413 and "at most" in r.json()["detail"]
    many = {"model": MODEL_ID, "messages": [{"role": "user", "content": "嗯"}] * 10_001}
    r = post(many)
    assert r.status_code == 400 and "messages: 10,001" in r.json()["detail"]
    for body, field in [
        ([1, 2], "request body"),
        ({"messages": {"role": "user"}}, "messages"),
        (_say("hi") | {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (_say("hi") | {"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        (_say("hi", max_tokens="many"), "max_tokens"),
        (_say("hi", max_tokens=0), "max_tokens"),
        (_say("hi", temperature=float("inf")), "temperature"),
        (_say("hi", user=5), "user"),
        (_say("hi", stop={"a": 1}), "stop"),
        (_say("hi", user="会" * 100), "session id"),
        (_say("hi", user=".hidden"), "session id"),
    ]:
        r = post(body) if not isinstance(body, dict) or "inf" not in str(body) else None
        if r is None:  # json= cannot send Infinity: send the raw text
            raw = json.dumps(body)
            r = httpx.post(
                url + "/v1/chat/completions",
                content=raw,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
        assert r.status_code == 400, (field, r.status_code, r.text[:200])
        assert field in r.json()["detail"], (field, r.json())
    assert httpx.get(url + "/sessions/" + "会" * 100).status_code == 404
    assert not list(sessions.folder.glob("*.jsonl"))


def test_a_token_is_asked_of_every_request_when_set(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        web.guard.token_from_env("short")
    token = "t" * 24
    server, url, _sessions = _app_server(tmp_path, token=token)
    try:
        body = _say("你好。")
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * 24}
        assert httpx.post(url + "/v1/chat/completions", json=body, headers=wrong).status_code == 401
        ok = {"Authorization": f"Bearer {token}"}
        assert httpx.post(url + "/v1/chat/completions", json=body, headers=ok).status_code == 200
        with httpx.Client() as browser:  # the page opened once with its token sets a cookie
            page = browser.get(url + f"/?token={token}")
            assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
            assert browser.post(url + "/v1/chat/completions", json=body).status_code == 200
    finally:
        server.should_exit = True


def test_sessions_are_append_only(chat):
    url, sessions = chat
    post = lambda b: httpx.post(url + "/v1/chat/completions", json=b, timeout=30).json()
    a = post(_say("我想少喝点酒。", user="s1"))
    h = [
        {"role": "user", "content": "我想少喝点酒。"},
        {"role": "assistant", "content": a["choices"][0]["message"]["content"]},
    ]
    b = post(_say("有时候我觉得我消失了对谁都好。", h, user="s1"))  # a crisis turn, appended
    assert b["mi_llm"]["session"] == "s1" and b["mi_llm"]["referral"]
    # a shorter history, then an edited one: the saved turns stay, each starts a linked session
    c = post(_say("我们换个话题吧。", user="s1"))
    d = post(_say("周末尤其难。", [h[0], {**h[1], "content": "改过的回复"}], user="s1"))
    saved = {x.id: x for x in _saved(sessions)}
    s1 = saved["s1"]
    crisis = "有时候我觉得我消失了对谁都好。"
    assert [t.text for t in s1.turns][:3] == [h[0]["content"], h[1]["content"], crisis]
    assert len(s1.turns) == 4
    (ev,) = s1.meta["events"]
    assert s1.turns[ev["turn"]].text == ev["text"] == crisis
    for out, shared in ((c, 0), (d, 1)):
        fork = saved[out["mi_llm"]["session"]]
        assert fork.meta["forked_from"] == "s1" and fork.meta["forked_at_turn"] == shared


def test_parallel_requests_to_one_session_lose_no_exchange(chat):
    url, sessions = chat
    texts = [f"第{i}件事让我很烦。" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        outs = list(
            pool.map(
                lambda t: httpx.post(
                    url + "/v1/chat/completions", json=_say(t, user="same"), timeout=60
                ),
                texts,
            )
        )
    assert [r.status_code for r in outs] == [200] * 20
    saved = _saved(sessions)
    client_turns = [t.text for d in saved for t in d.turns if t.speaker == "client"]
    assert sorted(client_turns) == sorted(texts)  # all 20 exchanges kept, none twice
    assert sum(d.id == "same" for d in saved) == 1
    assert all(d.meta.get("forked_from") == "same" for d in saved if d.id != "same")


# ----------------------------------------------------------------------------- transcription
TP = params.TranscriptionParams(min_length_ratio=0.3, max_length_ratio=3.0)
SRC = Dialogue(
    "d",
    "c",
    [
        Turn("client", "我最近喝得太多了。"),
        Turn("counselor", "你应该少喝。"),
        Turn("client", "我也想戒，可是身边的朋友都在喝。"),
        Turn("counselor", "那就别和他们来往。"),
    ],
    {},
    {},
)
GOOD = "咨询师：听起来喝酒这件事让你很困扰，能多说说吗？"
LAST = "咨询师：你想改变，同时朋友们让这件事更难，你怎么看？"


def _dialogue(c0=None, co1=GOOD, c2=None, co3=LAST) -> str:
    return "\n".join(
        [
            "来访者：" + (c0 or SRC.turns[0].text),
            co1,
            "来访者：" + (c2 or SRC.turns[2].text),
            co3,
        ]
    )


@pytest.mark.parametrize(
    "text, reason",
    [
        (_dialogue(co3=LAST + "来访者：是的，我决定明天就去戒酒。"), "speaker_label"),
        (_dialogue(co3="咨询师：我也想戒，可是身边的朋友都在喝，你怎么想？"), "client_sentence"),
        (_dialogue(c2="我也不想戒，可是身边的朋友都在喝。"), "client_altered.*negation"),
        (_dialogue(c0="我最近喝得太多了？"), "client_altered.*sentence type"),
        (_dialogue(c0="我最近三年喝得太多了。"), "client_altered.*number"),
    ],
)
def test_the_model_cannot_put_words_in_the_clients_mouth(text, reason):
    with pytest.raises(ValueError, match=reason):
        transcript.validate_dialogue(text, SRC, TP)


def test_stored_client_turns_are_the_sources():
    tp = dataclasses.replace(TP, client_edit_tolerance=0.2)
    turns = transcript.validate_dialogue(_dialogue(c2="我也想戒，可身边朋友都在喝。"), SRC, tp)
    assert [t.text for t in turns if t.speaker == "client"] == [
        SRC.turns[0].text,
        SRC.turns[2].text,
    ]
    with pytest.raises(ValueError, match="client_sentence"):
        transcript.validate_turn(
            "听起来你很为难。我也想戒，可是身边的朋友都在喝。",
            SRC.turns[1].text,
            SRC.turns[:1],
            TP,
            after=SRC.turns[2:],
        )


# ----------------------------------------------------------------------------- adapter identity
def test_changed_base_weights_change_the_adapter_identity(tmp_path, monkeypatch):
    from mi_llm.train import identity as ident_mod

    monkeypatch.setenv("MI_LLM_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "base"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights one")
    (weights / "config.json").write_text("{}")
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / ident_mod.TRAIN_FILE).parent.mkdir(parents=True, exist_ok=True)
    (run / ident_mod.TRAIN_FILE).write_text('{"messages": []}\n')
    P = dataclasses.replace(
        params.Params(name="t"), model_paths={"llama3-8b-chinese-chat-v2": str(weights)}
    )
    monkeypatch.setattr(type(P), "run_dir", property(lambda self: run))
    first = ident_mod.identity(P, "llama3-8b-chinese-chat-v2")
    assert first["base_model"] == "llama3-8b-chinese-chat-v2" and "weights_sha256" in first
    assert ident_mod.identity(P, "llama3-8b-chinese-chat-v2") == first  # cached, same answer
    time.sleep(0.01)
    (weights / "model.safetensors").write_bytes(b"weights two")  # same path, other weights
    second = ident_mod.identity(P, "llama3-8b-chinese-chat-v2")
    assert second["weights_sha256"] != first["weights_sha256"]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ident_mod.IDENTITY_FILE).write_text(json.dumps(first))
    assert "base weights changed" in ident_mod._stale(ckpt, second)
    other = ident_mod.identity(P, "glm-4-9b-chat")  # no local folder: hub id at revision
    assert other["weights_hub"].startswith("THUDM/glm-4-9b-chat-hf@")
    assert other["model_spec_sha256"] != first["model_spec_sha256"]  # another template


# ----------------------------------------------------------------------------- hostile endpoints
def _llm_params(**kw) -> LLMParams:
    base = {"provider": "remote", "request_timeout": 5, "max_retries": 1, "backoff_base": 0.01}
    return LLMParams(**{**base, "backoff_max": 0.05, **kw})


def test_retry_after_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(backoff, "RETRY_AFTER_MAX_S", 0.3)
    script = {1: {"status": 429, "retry_after": 100000}}
    done = {}

    def go():
        with fake_llm(lambda r: "ok", script=script) as url:
            ep = api.Endpoint(url, "m", "k", "remote")
            reqs = [api.Request("k1", [{"role": "user", "content": "hi"}])]
            done["res"] = api.complete(
                ep, reqs, llm_params=_llm_params(), cache_path=tmp_path / "c.sqlite", settings={}
            )

    t = threading.Thread(target=go, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout=20)
    assert "res" in done and done["res"][0].ok and time.monotonic() - t0 < 20


def test_a_non_json_body_sent_as_json_names_the_request(tmp_path):
    with fake_llm(lambda r: "ok", script=lambda n, req: "malformed") as url:
        ep = api.Endpoint(url, "m", "k", "remote")
        reqs = [api.Request("judge:cpsycound:abc", [{"role": "user", "content": "hi"}])]
        (res,) = api.complete(
            ep, reqs, llm_params=_llm_params(), cache_path=tmp_path / "c.sqlite", settings={}
        )
    assert not res.ok and "request judge:cpsycound:abc" in res.error
    assert "not JSON" in res.error


def test_the_test_server_takes_a_burst_of_connections():
    """256 connections opened at once are all accepted at once (a backlog of 5 drops the SYNs
    past it: those connect only after the kernel's 1 s retransmission)."""
    import selectors

    with fake_llm(lambda r: "ok") as url:
        port = int(urlsplit(url).port)
        socks, sel = [], selectors.DefaultSelector()
        try:
            for _ in range(256):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                socks.append(s)
                sel.register(s, selectors.EVENT_WRITE)
            t0, ready = time.monotonic(), 0
            while ready < len(socks) and time.monotonic() - t0 < 0.8:
                for key, _ in sel.select(timeout=0.05):
                    sel.unregister(key.fileobj)
                    ready += 1
            assert ready == 256, f"{ready} of 256 connected within 0.8 s"
        finally:
            for s in socks:
                s.close()
    assert openai_server._Server.request_queue_size >= 256


def test_a_quoted_client_sentence_is_a_reflection_and_passes():
    """The counselor quoting the client in quotation marks is a reflection, not words put in the
    counselor's mouth; the same sentence unquoted fails."""
    quoted = "听起来“我也想戒，可是身边的朋友都在喝”对你很难，你怎么看？"
    turns = transcript.validate_dialogue(_dialogue(co3="咨询师：" + quoted), SRC, TP)
    assert turns[-1].text == quoted
    with pytest.raises(ValueError, match="client_sentence"):
        transcript.validate_dialogue(
            _dialogue(co3="咨询师：" + quoted.replace("“", "").replace("”", "")), SRC, TP
        )


def test_weights_under_a_user_cache_folder_are_identified(tmp_path, monkeypatch):
    """The embedded model's weights live under ~/.cache/...: the folder's own path may hold a
    `.cache` part; only a `.cache/` inside the folder (a hub download's metadata) is skipped."""
    from mi_llm.train import identity

    monkeypatch.setenv("MI_LLM_CACHE", str(tmp_path / "user-cache"))
    folder = tmp_path / ".cache" / "models" / "m"
    (folder / ".cache").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / ".cache" / "download.lock").write_bytes(b"metadata")
    one = identity.weights_sha256(folder)
    (folder / ".cache" / "download.lock").write_bytes(b"other metadata")
    assert identity.weights_sha256(folder) == one
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert identity.weights_sha256(folder) != one
