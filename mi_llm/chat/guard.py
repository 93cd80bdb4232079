"""The chat is a local service that trusts no browser (docs/reliability.md).

Every request must name this machine as its Host (127.0.0.1, localhost or [::1], any port: a
DNS-rebinding page names its own host); a request with an Origin must come from the page this
server serves (same host and port); a POST must be `application/json` (the content types a page on
another site may send without asking first are refused) and at most MAX_BODY_BYTES; a chat request
carries at most MAX_MESSAGES messages, and every field it uses has the type and range the OpenAI
API gives it, else HTTP 400 naming the field. With a token (`--token` or $MI_LLM_CHAT_TOKEN) every
request must also carry it: `Authorization: Bearer <token>`, or the cookie the page sets when
opened once as `/?token=<token>`.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from urllib.parse import parse_qs, urlsplit

TOKEN_ENV = "MI_LLM_CHAT_TOKEN"
COOKIE = "mi_llm_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1_000_000
MAX_MESSAGES = 1000
MAX_TOKENS = 32_768


class Refused(Exception):
    """A request the chat refuses: HTTP status and a message saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def token_from_env(token: str | None = None) -> str | None:
    """The chat's token: the given one, else $MI_LLM_CHAT_TOKEN, else None (no token asked)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and len(token) < 16:
        raise ValueError(
            f"the chat token (--token or ${TOKEN_ENV}) has {len(token)} characters; use at "
            "least 16, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    return token or None


def _host_port(value: str) -> tuple[str, str]:
    """('127.0.0.1', '8765') of a Host header or an origin's netloc ('[::1]:80' -> '::1', '80')."""
    u = urlsplit("//" + value)
    try:
        port = str(u.port or "")
    except ValueError:
        port = "?"
    return (u.hostname or "").lower(), port


def check_headers(method: str, path: str, query: str, headers, token: str | None) -> bool:
    """Raise Refused unless the request may reach the app; True when it proved the token by the
    page's ?token= (the response then sets the cookie)."""
    host, port = _host_port(headers.get("host", ""))
    if host not in LOCAL_HOSTS:
        raise Refused(
            403,
            f"Host {headers.get('host', '')!r}: this chat answers only requests addressed to "
            "127.0.0.1, localhost or [::1]",
        )
    origin = headers.get("origin")
    if origin is not None:
        o = urlsplit(origin)
        o_host, o_port = _host_port(o.netloc)
        default = "443" if o.scheme == "https" else "80"
        if (
            o.scheme not in ("http", "https")
            or o_host not in LOCAL_HOSTS
            or (o_port or default) != (port or "80")
        ):
            raise Refused(403, f"Origin {origin!r}: only this chat's own page may call it")
    by_query = False
    if token is not None:
        given = headers.get("authorization", "")
        bearer = given[7:].strip() if given.lower().startswith("bearer ") else ""
        cookie = _cookie(headers.get("cookie", ""))
        page = parse_qs(query).get("token", [""])[0] if (method, path) == ("GET", "/") else ""
        ok = [hmac.compare_digest(t.encode(), token.encode()) for t in (bearer, cookie, page) if t]
        if not any(ok):
            raise Refused(
                401,
                "this chat asks for its token: send 'Authorization: Bearer <token>', or open the "
                "page once as /?token=<token>",
            )
        by_query = not any(ok[:-1]) if page else False
    if method == "POST":
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Refused(415, f"Content-Type {ctype or 'none'!r}: send application/json")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            raise Refused(413, f"request body of {length} bytes; at most {MAX_BODY_BYTES:,}")
    return by_query


def _cookie(header: str) -> str:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == COOKIE:
            return v
    return ""


async def read_json(request) -> dict:
    """The request body as a JSON object, read up to MAX_BODY_BYTES (Refused past it or when it
    is no JSON object)."""
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > MAX_BODY_BYTES:
            raise Refused(413, f"request body over {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "request body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, f"request body: a JSON object, not {type(body).__name__}")
    return body


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False) -> None:
    v = body.get(key)
    if v is None:
        return
    kind = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or not lo <= v <= hi:
        what = "a whole number" if integer else "a number"
        raise Refused(400, f"{key}: {what} from {lo:g} to {hi:g}, got {v!r}"[:200])


def check_body(body: dict) -> None:
    """The chat request's fields have the OpenAI API's types and ranges (Refused naming the field)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Refused(400, "messages: a non-empty list of {role, content} objects")
    if len(msgs) > MAX_MESSAGES:
        raise Refused(400, f"messages: {len(msgs):,} of them; at most {MAX_MESSAGES:,}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise Refused(400, f"messages[{i}]: an object with role and content")
        if not isinstance(m.get("role"), str):
            raise Refused(400, f"messages[{i}].role: system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise Refused(400, f"messages[{i}].content must be a string")
        if m["role"] != "system" and not m["content"].strip():
            raise Refused(400, f"messages[{i}].content: empty")
    for key in ("user", "mi_behaviour", "model"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Refused(400, f"{key}: a string, got {type(body[key]).__name__}")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Refused(400, f"stream: true or false, got {body['stream']!r}"[:200])
    _number(body, "max_tokens", 1, MAX_TOKENS, integer=True)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise Refused(400, "stop: a string or a list of at most 4 strings")
