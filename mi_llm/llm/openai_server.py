"""A local OpenAI-compatible server: chat completions, files and batches on 127.0.0.1 (tests, and
the dry run's stand-in for a remote model: mi_llm.llm.standin).

    with serve(handler, latency_s=0.2, script={1: {"status": 429, "retry_after": 1}}) as url:
        client = openai.OpenAI(base_url=url, api_key="test")
        ...
        url.stats.count  # chat requests received; url.stats.by_body: how often each body came

`handler(request_json) -> str` writes the assistant's answer; a handler that raises ValueError gets
HTTP 400 with its message (a request the stand-in cannot answer fails loudly, never retried). `script` injects failures for the
Nth chat request (1-based): a dict {n: action} or a callable (n, request_json) -> action | None.
Actions: "429" / {"status": 429, "retry_after": seconds}, "500", "slow" / {"slow": seconds}
(answers after that long; a client timeout shorter than it sees a timeout), "malformed" (HTTP 200
with a body that is not JSON), "truncated" (half the answer, finish_reason "length"), and HTTP 200
bodies that are no completion: "empty_choices", "error_body" ({"error": {...}}), "html" (a proxy's
page). {"status": 429, "retry_after": "<HTTP date>"} sends the date as it is.
`complete(prompt, request_json) -> str | (str, finish_reason)` answers POST /v1/completions (a
prompt or a list of them, one choice each, as vLLM's completions endpoint: the `server` decoding
engine, mi_llm.decode.server); GET /v1/models lists `models`.
The Batch API subset (POST /v1/files, GET /v1/files/{id}/content, POST /v1/batches,
GET /v1/batches/{id}) runs a batch's lines through the same handler when the batch is created and
reports it "in_progress" for `batch_polls` polls, then "completed".
"""

from __future__ import annotations

import email
import hashlib
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Stats:
    count: int = 0  # chat completion requests received (live, not batch)
    by_body: dict = field(default_factory=dict)  # sha256 of the request body -> times received
    requests: list = field(default_factory=list)  # every chat request's JSON, in arrival order
    answered: int = 0  # chat requests answered with a completion (HTTP 200, parseable)
    batches_created: int = 0
    completions: list = field(default_factory=list)  # every /v1/completions request's JSON
    lock: threading.Lock = field(default_factory=threading.Lock)

    def duplicates(self) -> int:
        """Requests received more than once with an identical body (messages and settings)."""
        return sum(n - 1 for n in self.by_body.values() if n > 1)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the listen backlog: 5 by default refuses bursts of 16+ connections


class BaseURL(str):
    """The server's base URL (".../v1"), carrying its Stats as `.stats`."""

    stats: Stats


def _tokens(text: str) -> int:
    return max(1, len(text) // 2)  # a rough count: the tests only need it stable and positive


def _completion(req: dict, text: str, finish_reason: str = "stop") -> dict:
    prompt = "".join(str(m.get("content", "")) for m in req.get("messages", []))
    return {
        "id": "chatcmpl-" + hashlib.sha1(text.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "message": {"role": "assistant", "content": text},
            }
        ],
        "usage": {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(text),
            "total_tokens": _tokens(prompt) + _tokens(text),
        },
    }


def _text_completion(req: dict, answers: list[tuple[str, str]]) -> dict:
    prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
    n_prompt = sum(_tokens(p) for p in prompts)
    n_out = sum(_tokens(t) for t, _ in answers)
    return {
        "id": "cmpl-" + hashlib.sha1(json.dumps(req).encode()).hexdigest()[:12],
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.get("model", "test-model"),
        "choices": [
            {"index": i, "text": t, "finish_reason": f, "logprobs": None}
            for i, (t, f) in enumerate(answers)
        ],
        "usage": {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out,
        },
    }


def _normalise(action):
    if action is None or isinstance(action, dict):
        return action or {}
    if action in ("429", 429):
        return {"status": 429}
    if action in ("500", 500):
        return {"status": 500}
    if action == "slow":
        return {"slow": 5.0}
    if action in ("malformed", "truncated", "empty_choices", "error_body", "html"):
        return {action: True}
    raise ValueError(f"unknown script action {action!r}")


def _make_handler(handler, latency_s, script, stats, store, batch_polls, complete, models):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # keep test output quiet
            pass

        def _send(self, status, body: bytes, ctype="application/json", headers=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def _json(self, status, obj, headers=None):
            self._send(status, json.dumps(obj).encode(), headers=headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self):
            raw = self._body()
            if self.path.endswith("/chat/completions"):
                return self._chat(raw)
            if self.path.endswith("/completions") and complete is not None:
                return self._complete(json.loads(raw))
            if self.path.endswith("/files"):
                return self._upload(raw)
            if self.path.endswith("/batches"):
                return self._create_batch(json.loads(raw))
            self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_GET(self):
            parts = self.path.rstrip("/").split("/")
            if "files" in parts and parts[-1] == "content":
                return self._send(200, store["files"][parts[-2]], "application/octet-stream")
            if "batches" in parts:
                b = store["batches"][parts[-1]]
                b["_polls"] += 1
                if b["_polls"] > batch_polls:
                    b.update(status="completed", output_file_id=b["_output"])
                return self._json(200, {k: v for k, v in b.items() if not k.startswith("_")})
            if parts[-1] == "models":
                data = [{"id": m, "object": "model"} for m in models]
                return self._json(200, {"object": "list", "data": data})
            self._json(404, {"error": {"message": f"no route {self.path}"}})

        def _chat(self, raw: bytes):
            req = json.loads(raw)
            with stats.lock:
                stats.count += 1
                n = stats.count
                key = hashlib.sha256(raw).hexdigest()
                stats.by_body[key] = stats.by_body.get(key, 0) + 1
                stats.requests.append(req)
            act = _normalise(script(n, req) if callable(script) else (script or {}).get(n))
            time.sleep(act.get("slow", latency_s))
            if act.get("status") == 429:
                hdr = {"Retry-After": str(act.get("retry_after", 1))}
                return self._json(
                    429, {"error": {"message": "rate limited", "type": "rate_limit"}}, hdr
                )
            if act.get("status"):
                return self._json(
                    act["status"], {"error": {"message": "server error", "type": "server"}}
                )
            if act.get("malformed"):
                return self._send(200, b'{"id": "chatcmpl-x", "choices": [{"mess')
            if act.get("empty_choices"):
                return self._json(200, {**_completion(req, ""), "choices": []})
            if act.get("error_body"):
                return self._json(200, {"error": {"message": "upstream overloaded", "code": 503}})
            if act.get("html"):
                return self._send(
                    200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
                )
            try:
                text = handler(req)
            except ValueError as e:
                return self._json(
                    400, {"error": {"message": str(e), "type": "invalid_request_error"}}
                )
            with stats.lock:
                stats.answered += 1
            if act.get("truncated"):
                return self._json(200, _completion(req, text[: len(text) // 2], "length"))
            self._json(200, _completion(req, text))

        def _complete(self, req: dict):
            with stats.lock:
                stats.completions.append(req)
            prompts = req.get("prompt")
            if not isinstance(prompts, (str, list)) or not prompts:
                return self._json(400, {"error": {"message": "prompt: a string or a list"}})
            try:
                out = [
                    complete(p, req) for p in ([prompts] if isinstance(prompts, str) else prompts)
                ]
            except ValueError as e:
                return self._json(404 if "model" in str(e) else 400, {"error": {"message": str(e)}})
            answers = [o if isinstance(o, tuple) else (o, "stop") for o in out]
            self._json(200, _text_completion(req, answers))

        def _upload(self, raw: bytes):
            msg = email.message_from_bytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
            )
            content = next(
                p.get_payload(decode=True)
                for p in msg.get_payload()
                if p.get_param("name", header="content-disposition") == "file"
            )
            fid = f"file-{len(store['files'])}"
            store["files"][fid] = content
            self._json(
                200,
                {
                    "id": fid,
                    "object": "file",
                    "bytes": len(content),
                    "purpose": "batch",
                    "filename": "input.jsonl",
                    "created_at": int(time.time()),
                    "status": "processed",
                },
            )

        def _create_batch(self, body: dict):
            out_lines = []
            for line in store["files"][body["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                text = handler(item["body"])
                out_lines.append(
                    json.dumps(
                        {
                            "id": "req",
                            "custom_id": item["custom_id"],
                            "response": {
                                "status_code": 200,
                                "body": _completion(item["body"], text),
                            },
                        }
                    )
                )
            bid, oid = f"batch-{len(store['batches'])}", f"file-out-{len(store['batches'])}"
            store["files"][oid] = ("\n".join(out_lines) + "\n").encode()
            with stats.lock:
                stats.batches_created += 1
            store["batches"][bid] = {
                "id": bid,
                "object": "batch",
                "endpoint": body["endpoint"],
                "status": "in_progress",
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "created_at": int(time.time()),
                "output_file_id": None,
                "_polls": 0,
                "_output": oid,
            }
            self._json(
                200, {k: v for k, v in store["batches"][bid].items() if not k.startswith("_")}
            )

    return H


@contextmanager
def serve(
    handler,
    latency_s: float = 0.0,
    script=None,
    batch_polls: int = 1,
    port: int = 0,
    complete=None,
    models=("test-model",),
):
    """Run the server on 127.0.0.1 (`port`, 0: a free one); yield its base URL (with `.stats`)."""
    stats = Stats()
    store = {"files": {}, "batches": {}}
    make = _make_handler(handler, latency_s, script, stats, store, batch_polls, complete, models)
    httpd = _Server(("127.0.0.1", port), make)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = BaseURL(f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    url.stats = stats
    try:
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()
