"""mi_llm.llm.api against the local OpenAI-compatible test server: retries, cache, batches, endpoints."""

from __future__ import annotations

import json
import socket
import time

import pytest
from openai_server import serve

from mi_llm.llm import api, batch, cache, prompts
from mi_llm.params import LLMParams


def fast_params(**kw) -> LLMParams:
    """Params with short timeouts and backoffs so failure paths run in well under a second."""
    base = {
        "provider": "remote",
        "max_concurrency": 8,
        "request_timeout": 0.5,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "batch_poll_s": 0.01,
    }
    return LLMParams(**{**base, **kw})


def echo(req: dict) -> str:
    return "答：" + req["messages"][-1]["content"]


def requests(n: int, prefix: str = "q") -> list[api.Request]:
    return [
        api.Request(f"{prefix}{i}", [{"role": "user", "content": f"{prefix}{i}"}]) for i in range(n)
    ]


def run(url, reqs, tmp_path, params=None, **kw):
    ep = api.Endpoint(url, "test-model", "test-key", "remote")
    kw.setdefault("settings", {"temperature": 0.0, "max_tokens": 16})
    return api.complete(
        ep, reqs, llm_params=params or fast_params(), cache_path=tmp_path / "c.sqlite", **kw
    )


def test_answers_in_request_order_with_tokens(tmp_path):
    with serve(echo) as url:
        res = run(url, requests(5), tmp_path)
    assert [r.text for r in res] == [f"答：q{i}" for i in range(5)]
    assert all(
        r.ok and r.attempts == 1 and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in res
    )
    use = api.usage(
        res, fast_params(prices={"test-model": {"prompt": 1.0, "completion": 2.0}}), "test-model"
    )
    assert use["requests"] == 5 and use["api_calls"] == 5 and use["cached"] == 0
    expected = (use["prompt_tokens"] * 1.0 + use["completion_tokens"] * 2.0) / 1e6
    assert use["cost_usd"] == pytest.approx(expected) and use["priced"]


def _http_date_in_3s() -> str:
    from email.utils import formatdate

    return formatdate(time.time() + 3, usegmt=True)  # whole seconds: the wait is 2..3 s


@pytest.mark.parametrize(
    "retry_after, min_wait",  # backoff alone would wait <= 0.01 s
    [(lambda: 1, 1.0), (_http_date_in_3s, 1.9)],
    ids=["seconds", "http-date"],
)
def test_retry_after_is_honoured(tmp_path, retry_after, min_wait):
    arrivals = []

    def handler(req):
        arrivals.append(time.monotonic())
        return "ok"

    t0 = time.monotonic()
    script = {1: {"status": 429, "retry_after": retry_after()}}
    with serve(handler, script=script) as url:
        res = run(url, requests(1), tmp_path)
        assert url.stats.count == 2
    # the second try came only after Retry-After
    assert res[0].ok and res[0].api_calls == 2 and arrivals[0] - t0 >= min_wait


@pytest.mark.parametrize("action", ["500", "malformed", {"slow": 1.5}])
def test_transport_failures_are_retried(tmp_path, action):
    with serve(echo, script={1: action}) as url:
        res = run(url, requests(1), tmp_path)
        assert url.stats.count == 2
    assert res[0].ok and res[0].text == "答：q0" and res[0].api_calls == 2 and res[0].attempts == 1


def test_transport_failure_after_retries_is_reported(tmp_path):
    with serve(echo, script=lambda n, req: "500") as url:
        res = run(url, requests(1), tmp_path, params=fast_params(max_retries=2))
        assert url.stats.count == 3  # one try plus max_retries
    assert not res[0].ok and res[0].error == "transport: InternalServerError 500: server error"
    assert res[0].attempts == 0


def test_truncated_answers_are_retried_then_failed(tmp_path):
    with serve(echo, script={1: "truncated"}) as url:
        res = run(url, requests(1), tmp_path, retries=1)
    assert res[0].ok and res[0].attempts == 2 and res[0].errors == ["truncated"]
    with serve(echo, script=lambda n, req: "truncated") as url:
        res = run(url, requests(1, "t"), tmp_path, retries=2)
        assert url.stats.count == 3
    assert not res[0].ok and res[0].error == "truncated" and len(res[0].raw) == 3


def test_invalid_answers_are_retried_then_failed_by_reason(tmp_path):
    answers = iter(["not json", '{"score": 2}'])

    def validate(text):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"unparseable: {e.msg}") from None

    with serve(lambda req: next(answers)) as url:
        res = run(url, requests(1), tmp_path, validate=validate, retries=1)
    assert (
        res[0].ok and res[0].parsed == {"score": 2} and res[0].errors[0].startswith("unparseable")
    )
    with serve(lambda req: "still not json") as url:
        res = run(url, requests(1, "u"), tmp_path, validate=validate, retries=1)
    assert (
        not res[0].ok
        and res[0].error.startswith("unparseable")
        and res[0].raw == ["still not json"] * 2
    )


def test_no_answer_lost_or_duplicated_under_failures(tmp_path):
    script = {
        3: "500",
        7: {"status": 429, "retry_after": 0},
        11: "malformed",
        15: "truncated",
        19: {"slow": 1.0},
    }
    reqs = requests(40)
    with serve(echo, latency_s=0.02, script=script) as url:
        res = run(url, reqs, tmp_path, retries=1)
        time.sleep(1.1)  # let the abandoned slow answer finish on the server side
        answered = url.stats.answered
        asked = {}
        for q in url.stats.requests:
            asked[q["messages"][-1]["content"]] = asked.get(q["messages"][-1]["content"], 0) + 1
    assert [r.key for r in res] == [q.key for q in reqs] and all(r.ok for r in res)
    assert [r.text for r in res] == [f"答：q{i}" for i in range(40)]
    # every request asked, plus exactly one more request for each injected failure (5 of them)
    assert set(asked) == {f"q{i}" for i in range(40)} and sum(asked.values()) == 45
    # the slow answer was still answered (after the client gave up), the rest once each + truncated
    assert answered == 40 + 1 + 1


def test_cache_makes_rerun_free(tmp_path):
    with serve(echo) as url:
        first = run(url, requests(6), tmp_path)
        n = url.stats.count
        again = run(url, requests(6), tmp_path)
        assert url.stats.count == n == 6
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    assert api.usage(again, fast_params(), "test-model")["api_calls"] == 0


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run("http://127.0.0.1:9/v1", requests(2) + requests(1), tmp_path)


def test_batch_api_path_and_resume_by_batch_id(tmp_path, monkeypatch):
    reqs = requests(4, "b")
    with serve(echo, batch_polls=2) as url:
        real_ingest = batch._ingest

        def crash(*a, **k):  # the process dies after submitting, before ingesting
            raise KeyboardInterrupt

        monkeypatch.setattr(batch, "_ingest", crash)
        with pytest.raises(KeyboardInterrupt):
            run(url, reqs, tmp_path, batch_dir=tmp_path / "batch")
        monkeypatch.setattr(batch, "_ingest", real_ingest)
        res = run(url, reqs, tmp_path, batch_dir=tmp_path / "batch")
        assert url.stats.batches_created == 1  # resumed by the stored batch id, not resubmitted
        assert url.stats.count == 0  # nothing went through live requests
    assert [r.text for r in res] == [f"答：b{i}" for i in range(4)] and all(r.ok for r in res)
    assert json.loads((tmp_path / "batch" / "attempt0" / "batch.json").read_text())["n"] == 4


def test_remote_endpoint_needs_the_key_and_never_shows_it(monkeypatch):
    monkeypatch.delenv("MI_TEST_KEY", raising=False)
    with (
        pytest.raises(RuntimeError, match=r"\$MI_TEST_KEY is not set"),
        api.endpoint(LLMParams(provider="remote", api_key_env="MI_TEST_KEY")),
    ):
        pass
    monkeypatch.setenv("MI_TEST_KEY", "sk-secret-123")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    with api.endpoint(LLMParams(provider="remote", api_key_env="MI_TEST_KEY", model="m")) as ep:
        assert ep.api_key == "sk-secret-123" and ep.base_url == "http://127.0.0.1:1/v1"
        assert "sk-secret" not in repr(ep)


def test_prompts_load_parts_and_render(tmp_path):
    parts = prompts.parts("mi_turn_v1")
    assert {"system", "user", "shot1_user", "shot1_assistant"} <= set(parts)
    assert "{source}" in parts["user"]
    assert prompts.render("a {x} {y} {z}", x=1, y="b") == "a 1 b {z}"
    mine = tmp_path / "mine.md"
    mine.write_text("## system\nS\n## user\nU {dialogue}\n", encoding="utf-8")
    assert prompts.parts(str(mine)) == {"system": "S", "user": "U {dialogue}"}
    assert prompts.name(str(mine)) == "mine"
    with pytest.raises(FileNotFoundError, match="known"):
        prompts.load("no_such_prompt")


@pytest.mark.slow
def test_embedded_endpoint_serves_and_stops(tiny_model_dir, tmp_path):
    p = LLMParams(
        provider="serve",
        model=str(tiny_model_dir),
        serve_timeout=300,
        max_concurrency=2,
        request_timeout=120,
    )
    with api.endpoint(p, log_dir=tmp_path) as ep:
        res = api.complete(
            ep,
            requests(2),
            llm_params=p,
            cache_path=tmp_path / "c.sqlite",
            settings={"max_tokens": 4, "temperature": 0.0},
            truncated_ok=True,
        )
        port = ep.base_url.split(":")[-1].split("/")[0]
    assert all(r.text is not None and r.completion_tokens > 0 for r in res)
    time.sleep(0.5)
    with socket.socket() as s:  # the server is gone: its port no longer accepts connections
        assert s.connect_ex(("127.0.0.1", int(port))) != 0


@pytest.mark.parametrize(
    "action, detail",
    [
        ("empty_choices", "without choices"),
        ("error_body", "upstream overloaded"),
        ("html", "502 Bad Gateway"),
    ],
)
def test_malformed_200_answers_are_retried_and_name_the_request(tmp_path, action, detail):
    with serve(echo, script={1: action}) as url:  # once: the retry gets a real answer
        res = run(url, requests(1), tmp_path)
        assert url.stats.count == 2
    assert res[0].ok and res[0].text == "答：q0"
    with serve(echo, script=lambda n, req: action) as url:  # always: a failure naming the request
        res = run(url, requests(2, "m"), tmp_path, params=fast_params(max_retries=1))
        assert url.stats.count == 4
    for r in res:
        assert not r.ok and r.error.startswith("transport: ") and detail in r.error
        assert f"request {r.key}" in r.error


def test_failure_reason_records_status_and_message(tmp_path):
    with serve(echo, script=lambda n, req: {"status": 503}) as url:
        res = run(url, requests(1), tmp_path, params=fast_params(max_retries=0))
    assert res[0].error == "transport: InternalServerError 503: server error"


# ----------------------------------------------------------------------------- the server dies with its parent
def _gone(pid: int, within: float) -> float | None:
    """Seconds until process pid no longer runs (None if it still runs after `within`)."""
    import os

    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie no longer runs
                    return time.monotonic() - t0
        except FileNotFoundError:
            return time.monotonic() - t0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def _children(pid: int) -> list[int]:
    import os

    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def test_watchdog_kills_a_process_whose_parent_died():
    import os
    import signal
    import subprocess
    import sys

    # parent -> child; the child runs watch_parent(parent) and would sleep a minute
    child = (
        "import os, time; from mi_llm.llm.local import watch_parent; watch_parent(os.getppid(), 0.2); "
        "print(os.getpid(), flush=True); time.sleep(60)"
    )
    script = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\ntime.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _gone(pid, 1.0) is None  # alive while its parent is
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _gone(pid, 5.0) is not None


@pytest.mark.slow
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig", "watchdog-only"])
def test_embedded_server_stops_within_seconds_of_its_parents_kill_9(
    tiny_model_dir, tmp_path, pdeathsig
):
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\nfrom pathlib import Path\nfrom mi_llm.llm import api\n"
        + ("" if pdeathsig else "api._die_with_parent = lambda: None\n")
        + f"with api.serve(Path({str(tiny_model_dir)!r}), log_dir=Path({str(tmp_path)!r})) as base:\n"
        "    print(base, flush=True)\n    time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        base = parent.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), "the server did not start"
        (server,) = _children(parent.pid)
        # a generation in flight when the parent dies: the server must not finish it first
        import threading

        threading.Thread(
            target=lambda: api.complete(
                api.Endpoint(base, str(tiny_model_dir), "k", "embedded"),
                requests(1, "late"),
                llm_params=LLMParams(max_retries=0, request_timeout=30),
                cache_path=tmp_path / "c.sqlite",
                settings={"max_tokens": 2000},
                truncated_ok=True,
            ),
            daemon=True,
        ).start()
        time.sleep(1.0)
        port = int(base.split(":")[-1].split("/")[0])
        t0 = time.monotonic()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(server, 5.0) is not None, "the server outlived its parent by more than 5 s"
        while time.monotonic() - t0 < 5.0:  # its last thread gone, the port is closed too
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.1)
        took = time.monotonic() - t0
        print(f"server and port gone {took:.1f} s after kill -9 of its parent")
        assert took < 5.0, "the server still listened 5 s after its parent's death"
    finally:
        if parent.poll() is None:
            parent.kill()


# ----------------------------------------------------------------------------- the embedded model in process
def chats(n: int) -> list[api.Request]:
    texts = [
        "我最近睡不好，总是担心工作。",
        "I want to drink less but every evening I end up at the bar.",
        "孩子不听话，我很累。",
        "My doctor says I should walk more.",
    ]
    return [
        api.Request(f"c{i}", [{"role": "user", "content": texts[i % len(texts)] * (1 + i % 3)}])
        for i in range(n)
    ]


def test_in_process_provider_batches_and_matches_one_at_a_time(tiny_model_dir, tmp_path):
    """Greedy answers are transformers' greedy `generate` answers, batched or one request at a
    time; a cached re-run loads no model."""
    import torch

    p = LLMParams(provider="embedded", model=str(tiny_model_dir), max_concurrency=4)
    settings = {"temperature": 0.0, "max_tokens": 6}

    def ask(ep, reqs, cache="c.sqlite"):
        return api.complete(
            ep,
            reqs,
            llm_params=p,
            cache_path=tmp_path / cache,
            settings=settings,
            truncated_ok=True,
        )

    with api.endpoint(p) as ep:
        assert (
            ep.provider == "embedded" and ep.local.model is None
        )  # nothing loaded before a request
        res = ask(ep, chats(6))
        model, tok = ep.local.model, ep.local.tok
        for q, r in zip(chats(6), res):  # the greedy loop writes what transformers' generate writes
            text = tok.apply_chat_template(q.messages, tokenize=False, add_generation_prompt=True)
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                new = model.generate(**enc, max_new_tokens=6, do_sample=False)[0]
            want = tok.decode(new[enc["input_ids"].shape[1] :], skip_special_tokens=True)
            assert r.text == want.strip()
    assert all(
        r.ok and r.api_calls == 1 and r.completion_tokens > 0 and r.prompt_tokens > 5 for r in res
    )
    one = []
    for i, q in enumerate(
        chats(6)
    ):  # a fresh cache per request: each answered alone (batch of one)
        with api.endpoint(p) as ep1:
            one += ask(ep1, [q], f"one{i}.sqlite")
    assert [r.text for r in res] == [r.text for r in one]
    assert [r.completion_tokens for r in res] == [r.completion_tokens for r in one]
    with api.endpoint(p) as ep:  # the re-run: every answer from the cache, the model never loaded
        again = ask(ep, chats(6))
        assert ep.local.model is None
    assert [r.text for r in again] == [r.text for r in res] and all(r.cached for r in again)


def test_served_model_starts_only_for_uncached_requests(tiny_model_dir, tmp_path, monkeypatch):
    """provider serve: a re-run whose answers are all cached never starts `transformers serve`."""
    p = LLMParams(provider="serve", model=str(tiny_model_dir), max_concurrency=2)
    settings = {"temperature": 0.0, "max_tokens": 4}
    store = cache.Cache(tmp_path / "c.sqlite")
    for q in requests(3):
        store.put(
            cache.cache_key(str(tiny_model_dir), settings, q.messages, 0),
            q.key,
            str(tiny_model_dir),
            cache.Answer(f"a-{q.key}", "stop", 3, 2),
        )
    store.close()
    started = []
    monkeypatch.setattr(
        api, "serve", lambda *a, **kw: started.append(1) or pytest.fail("server started")
    )
    with api.endpoint(p) as ep:
        res = api.complete(
            ep, requests(3), llm_params=p, cache_path=tmp_path / "c.sqlite", settings=settings
        )
        assert ep.base_url == "" and not started
    assert [r.text for r in res] == ["a-q0", "a-q1", "a-q2"] and all(r.cached for r in res)
    with serve(echo) as url:  # one uncached request: the opener runs (here: the test server's URL)
        monkeypatch.setattr(api, "serve", lambda *a, **kw: _url_context(url))
        with api.endpoint(p) as ep:
            res = api.complete(
                ep, requests(4), llm_params=p, cache_path=tmp_path / "c.sqlite", settings=settings
            )
            assert ep.base_url == url
    assert res[3].text == "答：q3" and res[3].api_calls == 1 and res[0].cached


def _url_context(url):
    from contextlib import nullcontext

    return nullcontext(url)
