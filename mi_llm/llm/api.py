"""OpenAI-compatible LLM access for the judge (01), the transcriber (02) and the MITI coder (04).

    with llm.endpoint(P.llm) as ep:
        results = llm.complete(ep, [llm.Request(key, messages)], llm_params=P.llm,
                               cache_path=..., settings={"temperature": 0.7, "max_tokens": 256},
                               validate=parse, retries=2)

`endpoint` gives a remote endpoint (key from the environment, never stored) or serves an embedded
registry model with `transformers serve` on 127.0.0.1. `complete` sends requests concurrently through
the official `openai` AsyncOpenAI client with our own backoff (429/5xx/timeouts, Retry-After honoured
up to backoff.RETRY_AFTER_MAX_S, jitter), validates each answer, asks again up to `retries` times,
and keeps every finished answer in a SQLite cache keyed by (model, settings, messages, attempt),
committed at once: a re-run or a resume after kill -9 repeats no finished request. The OpenAI Batch API (mi_llm.llm.batch) is the same call
with batch_dir set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import openai
from tqdm.auto import tqdm

from mi_llm.llm import backoff, batch
from mi_llm.llm.cache import Answer, Cache, cache_key

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


# ----------------------------------------------------------------------------- endpoints
@dataclass
class Endpoint:
    base_url: str
    model: str  # the model id sent with every request
    api_key: str = field(repr=False)  # never printed, never stored
    provider: str = "remote"
    local: object = field(default=None, repr=False)  # embedded: the in-process local.Generator
    opener: object = field(
        default=None, repr=False
    )  # serve: starts the server, returns its base URL

    def open(self) -> None:
        """Start what answers the requests (a lazily served model) when it has not started yet."""
        if self.opener is not None and not self.base_url:
            self.base_url = self.opener()


def model_folder(name: str) -> Path:
    """Local folder of an embedded model: the registry's embedded entry, a folder path, or registry.get."""
    from mi_llm.models import embedded

    if name == embedded.NAME:
        return embedded.model_dir()
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        from mi_llm.models import registry
    except ImportError as e:
        raise ValueError(
            f"llm.model {name!r}: not the embedded model and no registry available"
        ) from e
    return Path(registry.get(name).hub_id)  # a hub id works offline when it is in the HF cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, url: str, timeout: float, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"transformers serve exited with {proc.returncode}; log: {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"transformers serve did not answer within {timeout:.0f} s; log: {log}")


PAGE_TOKENS = 256  # transformers' continuous-batching page size (tokens per cache block)


@contextmanager
def serve(
    folder: Path,
    timeout: float = 300.0,
    log_dir: Path | None = None,
    kv_tokens: int = 8192,
    batch_tokens: int = 2048,
    continuous_batching: bool = True,
):
    """Serve a local model folder with `transformers serve --continuous-batching`; yield its base URL.
    continuous_batching=False: sequential `generate` calls, which apply a request's
    `generation_config` (e.g. no_repeat_ngram_size; continuous batching takes only sampling)."""
    port = _free_port()
    # the transformers CLI under a watchdog that stops it when this process dies (mi_llm.llm.local);
    # an explicit KV cache size: by default it claims 90% of free memory (OOM-killed beside other
    # jobs on a CPU)
    cmd = [
        sys.executable,
        "-m",
        "mi_llm.llm.local",
        "--parent",
        str(os.getpid()),
        "serve",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu" if not _has_cuda() else "auto",
    ]
    if continuous_batching:
        cmd += ["--continuous-batching", "--cb-num-blocks", str(-(-kv_tokens // PAGE_TOKENS))]
        cmd += ["--cb-max-batch-tokens", str(batch_tokens)]
    log = Path(log_dir or "/tmp") / f"transformers-serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as logf:
        # own process group so that stopping it also stops anything it spawned
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (prctl only; no locks taken)
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, timeout, log)
        yield base + "/v1"
    finally:
        _stop(proc)


def _die_with_parent() -> None:
    # Linux: the kernel kills the server when the process that started it dies (even by kill -9).
    # SIGKILL, not SIGTERM: on SIGTERM the server first finishes its abandoned generations (a minute
    # at full CPU); the watchdog in mi_llm.llm.local covers other systems and a parent that died first
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def endpoint(llm_params, log_dir: Path | None = None):
    """The endpoint named by params: remote (base_url/$OPENAI_BASE_URL + key from env) or embedded."""
    if llm_params.provider == "remote":
        key = os.environ.get(llm_params.api_key_env)
        if not key:
            raise RuntimeError(f"llm.provider is remote but ${llm_params.api_key_env} is not set")
        base = llm_params.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
        yield Endpoint(base, llm_params.model, key, "remote")
        return
    folder = model_folder(llm_params.model)
    if (
        llm_params.provider == "embedded"
    ):  # in this process, batched; the model loads on the first uncached request
        from mi_llm.llm import local

        # the model id is the folder, as with the server: both providers share cached answers
        yield Endpoint(
            "",
            str(folder),
            "embedded-no-key",
            "embedded",
            local=local.Generator(folder, batch_size=llm_params.max_concurrency),
        )
        return
    with (
        ExitStack() as stack
    ):  # serve: the server starts on the first request the cache does not hold

        def opener():
            return stack.enter_context(
                serve(
                    folder,
                    timeout=llm_params.serve_timeout,
                    log_dir=log_dir,
                    kv_tokens=llm_params.serve_kv_tokens,
                    batch_tokens=llm_params.serve_batch_tokens,
                )
            )

        # the server is pinned to the folder: requests must name it as their model
        yield Endpoint("", str(folder), "embedded-no-key", "serve", opener=opener)


# ----------------------------------------------------------------------------- requests and results
@dataclass
class Request:
    key: str  # stable id of the unit, e.g. "<prompt_version>:<dialogue content hash>"
    messages: list[dict]
    validate: object = None  # optional validator for this request alone (overrides complete's)


@dataclass
class Result:
    key: str
    text: str | None = None  # the last answer
    parsed: object = None  # validate(text) of the accepted answer
    ok: bool = False
    error: str | None = None  # why it failed: "truncated", a validation reason, "transport: ..."
    attempts: int = 0
    raw: list = field(default_factory=list)  # every raw answer, in order
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False  # every answer came from the cache (no API call in this run)
    api_calls: int = 0  # HTTP requests made for it in this run (transport retries included)
    errors: list = field(default_factory=list)  # the reason of every rejected attempt


class MalformedAnswer(Exception):
    """An HTTP 200 whose body is no chat completion (no choices, an {"error": ...} body, HTML)."""


RETRIABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    json.JSONDecodeError,
    openai.APIResponseValidationError,
    MalformedAnswer,
)


def _answer(r, key: str) -> Answer:
    """The Answer in a chat completion response, or MalformedAnswer naming the request."""
    if isinstance(r, (str, bytes)):
        raise MalformedAnswer(f"request {key}: HTTP 200 body is not JSON: {str(r)[:80]!r}")
    err = getattr(r, "error", None) or (getattr(r, "model_extra", None) or {}).get("error")
    choices = getattr(r, "choices", None)
    if err is not None and not choices:
        raise MalformedAnswer(f"request {key}: HTTP 200 with an error body: {str(err)[:120]}")
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswer(f"request {key}: HTTP 200 without choices")
    msg = getattr(choices[0], "message", None)
    if msg is None:
        raise MalformedAnswer(f"request {key}: HTTP 200 whose first choice has no message")
    u = getattr(r, "usage", None)
    return Answer(
        msg.content or "",
        choices[0].finish_reason or "stop",
        (u.prompt_tokens or 0) if u else 0,
        (u.completion_tokens or 0) if u else 0,
    )


def describe(e: BaseException) -> str:
    """A failure's type, HTTP status and a short message, e.g. "InternalServerError 500: server error"."""
    status = getattr(e, "status_code", None)
    msg = getattr(e, "message", None) or str(e)
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        msg = body["message"]
    msg = " ".join(str(msg).split())[:160]
    return f"{type(e).__name__}{f' {status}' if status else ''}: {msg}" if msg else type(e).__name__


async def _call(client, ep: Endpoint, messages, settings, llm_params, res: Result) -> Answer:
    """One chat completion with backoff on 429/5xx/timeouts/malformed bodies; raises when exhausted."""
    for i in range(llm_params.max_retries + 1):
        res.api_calls += 1
        try:
            try:
                r = await client.chat.completions.create(
                    model=ep.model, messages=messages, **settings
                )
            except json.JSONDecodeError as e:  # a body labelled application/json that is not
                raise MalformedAnswer(
                    f"request {res.key}: HTTP 200 body sent as JSON is not JSON ({e.msg} at "
                    f"character {e.pos}): {e.doc[:80]!r}"
                ) from e
            return _answer(r, res.key)
        except RETRIABLE as e:
            if i == llm_params.max_retries:
                raise
            # full jitter on exponential backoff; Retry-After is a floor (up to its cap)
            delay = random.uniform(0, min(llm_params.backoff_max, llm_params.backoff_base * 2**i))
            await asyncio.sleep(max(delay, backoff.retry_after(e) or 0.0))
    raise AssertionError("unreachable")


def _judge(res: Result, a: Answer, validate, truncated_ok: bool) -> None:
    """Accept or reject one answer (a truncated one only when truncated_ok: validate checks it)."""
    res.text = a.text
    res.raw.append(a.text)
    res.prompt_tokens += a.prompt_tokens
    res.completion_tokens += a.completion_tokens
    try:
        if a.finish_reason == "length" and not truncated_ok:
            raise ValueError("truncated")
        res.parsed = validate(a.text) if validate else a.text
        res.ok, res.error = True, None
    except ValueError as e:
        res.error = str(e) or type(e).__name__
        res.errors.append(res.error)


async def _run_live(ep, todo, llm_params, cache, settings, validate, truncated_ok, bar, last):
    """Fetch (cache or API) and judge the given (request, result, attempt) triples concurrently."""
    sem = asyncio.Semaphore(llm_params.max_concurrency)
    client = openai.AsyncOpenAI(
        base_url=ep.base_url, api_key=ep.api_key, max_retries=0, timeout=llm_params.request_timeout
    )

    async def one(req, res, attempt):
        key = cache_key(ep.model, settings, req.messages, attempt)
        a = cache.get(key)
        if a is None:
            async with sem:
                try:
                    a = await _call(client, ep, req.messages, settings, llm_params, res)
                except (openai.APIError, json.JSONDecodeError, MalformedAnswer) as e:
                    res.error, res.ok = f"transport: {describe(e)}", False
                    res.errors.append(res.error)
                    bar.update(1)
                    return res
            cache.put(key, req.key, ep.model, a)  # committed before anything else happens
        res.attempts = attempt + 1
        _judge(res, a, req.validate or validate, truncated_ok)
        if res.ok or last:
            bar.update(1)  # this request is final
        return res

    try:
        await asyncio.gather(*(one(*t) for t in todo))
    finally:
        await client.close()


def _run_local(ep, todo, llm_params, cache, settings, validate, truncated_ok, bar, last):
    """As _run_live for the in-process embedded model: cache first, the misses in generate batches."""
    misses = []
    for req, res, attempt in todo:
        key = cache_key(ep.model, settings, req.messages, attempt)
        a = cache.get(key)
        if a is None:
            misses.append((req, res, attempt, key))
        else:
            _accept(res, a, attempt, req.validate or validate, truncated_ok, bar, last)
    if not misses:
        return
    for idx, answers in ep.local.batches([m[0].messages for m in misses], settings):
        for i, (text, finish, n_prompt, n_completion) in zip(idx, answers):
            req, res, attempt, key = misses[i]
            res.api_calls += 1
            a = Answer(text, finish, n_prompt, n_completion)
            cache.put(key, req.key, ep.model, a)  # committed batch by batch (kill -9 safe)
            _accept(res, a, attempt, req.validate or validate, truncated_ok, bar, last)


def _accept(res, a, attempt, validate, truncated_ok, bar, last) -> None:
    res.attempts = attempt + 1
    _judge(res, a, validate, truncated_ok)
    if res.ok or last:
        bar.update(1)  # this request is final


def _uncached(ep, todo, cache, settings) -> bool:
    return any(
        cache.get(cache_key(ep.model, settings, q.messages, attempt)) is None
        for q, _, attempt in todo
    )


def _in_thread(coro):
    """Run a coroutine on its own loop in a worker thread (notebooks already run a loop here)."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return ex.submit(loop.run_until_complete, task).result()
    except BaseException:  # Ctrl-C / kernel interrupt: cancel the requests in flight, then leave
        loop.call_soon_threadsafe(task.cancel)
        raise
    finally:
        ex.shutdown(wait=True)
        loop.close()


def complete(
    ep: Endpoint,
    requests: list[Request],
    *,
    llm_params,
    cache_path,
    settings: dict,
    validate=None,
    retries: int = 0,
    desc: str = "llm",
    batch_dir=None,
    truncated_ok: bool = False,
) -> list[Result]:
    """Answer every request (cache first), validate, retry invalid ones; results in request order.

    An answer cut at max_tokens (finish_reason "length") is invalid ("truncated") unless truncated_ok,
    for answers whose unit ends before the cut (e.g. one line, when the server ignores `stop`).
    """
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("llm.complete: request keys must be unique")
    cache = Cache(cache_path)
    results = [Result(r.key) for r in requests]
    bar = tqdm(total=len(requests), desc=desc, unit="req")
    try:
        pending = list(zip(requests, results))
        for attempt in range(retries + 1):
            todo = [(q, r, attempt) for q, r in pending]
            if (
                batch_dir is not None
            ):  # fill the cache through the Batch API; the live pass then reads it
                batch.run_batch(
                    ep, todo, llm_params, cache, settings, Path(batch_dir) / f"attempt{attempt}"
                )
            args = (ep, todo, llm_params, cache, settings, validate, truncated_ok, bar)
            last = attempt == retries
            if ep.local is not None or not _uncached(ep, todo, cache, settings):
                # in process, or every answer cached: a served model is never started for nothing
                _run_local(*args, last)
            else:
                ep.open()
                _in_thread(_run_live(*args, last))
            # a transport failure already used its own retries; only invalid answers are asked again
            pending = [(q, r) for q, r in pending if not (r.ok or r.error.startswith("transport"))]
            if not pending:
                break
        for r in results:
            r.cached = r.attempts > 0 and r.api_calls == 0
    finally:
        bar.close()
        cache.close()
    return results


def complete_by_key(ep: Endpoint, contents: dict[str, str], **kw) -> dict[str, Result]:
    """complete() for one user message per key (each asked once); the results by key."""
    reqs = [Request(k, [{"role": "user", "content": c}]) for k, c in contents.items()]
    return {r.key: r for r in complete(ep, reqs, **kw)}


# ----------------------------------------------------------------------------- accounting
def usage(results: list[Result], llm_params, model: str) -> dict:
    """Requests, API calls, cache hits, tokens and cost in USD (prices per 1M tokens from params)."""
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    price = (llm_params.prices or {}).get(model) or (llm_params.prices or {}).get(Path(model).name)
    cost = (prompt * price["prompt"] + completion * price["completion"]) / 1e6 if price else 0.0
    return {
        "requests": len(results),
        "answers": sum(r.attempts for r in results),  # attempts with an answer (cache or API)
        "api_calls": sum(r.api_calls for r in results),  # HTTP requests made in this run
        "cached": sum(r.cached for r in results),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": round(cost, 6),
        "priced": price is not None,
    }
