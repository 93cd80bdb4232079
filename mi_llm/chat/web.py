"""Talk to a run's model: an OpenAI-compatible endpoint and a chat page on 127.0.0.1, crisis-screened.

    python -m mi_llm chat runs/smoke [--model gemma3-270m] [--variant finetuned] [--port 8765]

The run's model (its `provenance.json` params name the models and their weights) is served with
`transformers serve` (mi_llm.llm.api.serve). `transformers serve` loads plain model folders, so the
finetuned variant serves the base weights with stage 03's LoRA adapter merged in, cached once per
adapter hash under ~/.cache/mi-llm/merged/. The conditioned variant (stage 04's third variant)
needs its reply to start with the behaviour tag `<mi:label>`, which an OpenAI endpoint cannot
prefill, so it is generated in this process with the same merged weights and the same code as
stage 04 (engine.generate_batches with the tag as prefix). Each reply's behaviour is the run's
`evaluation.condition_on`: a fixed label, or `forecaster` (04's forecaster.joblib on the
conversation so far); a request may name one with the extra field `mi_behaviour`. The tag is
cut from the reply and saved as the turn's behaviour. In front of either, a small FastAPI app

- answers `POST /v1/chat/completions` and `GET /v1/models` like any OpenAI endpoint (curl, the
  `openai` package), non-streaming;
- screens every client message (mi_llm.chat.safety.screen); a flagged one gets the fixed referral reply
  for its category (self-harm or harm to others) in the conversation's language with the configured
  crisis line, instead of the model's reply (`on_crisis="refer"`) or before it
  (`"refer_then_reply"`). The referral is unconditional: every referral text is rendered at
  start-up, and the event is logged (`chat/events/crisis.jsonl`, with its construct) and the
  referral chosen before any model is asked; a failing model under `refer_then_reply` still
  sends the referral;
- refuses a request naming a model it does not serve (400, listing the served ones);
- saves every session as one `schema.Dialogue` line in `runs/<name>/chat/<session>.jsonl`
  (rewritten after each turn) with the model, variant, adapter hash, timestamps and crisis events;
- serves the chat page (`templates/chat.html`) at `/`.

A request names its session with the OpenAI `user` field; without one, a conversation continues
the session whose turns its history repeats, else it starts a new one. Sessions are append-only
(mi_llm.chat.store): a history that differs from the named session's turns starts a new session
linked to it. The app trusts no browser (mi_llm.chat.guard): local Host, its own Origin, JSON
bodies of bounded size, typed fields, and a token when one is set (`--token`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the handler's annotation here

from mi_llm.chat import guard, safety, safety_llm, serving, store
from mi_llm.chat import referral as referrals
from mi_llm.data.schema import SPEAKER_OF

ON_CRISIS = ("refer", "refer_then_reply")
_ROLE = SPEAKER_OF


# ----------------------------------------------------------------------------- the app
class BadRequest(ValueError):
    """A chat request the endpoint refuses (HTTP 400), saying why."""


def _history(messages, where="request") -> tuple[list[tuple], str]:
    """(earlier turns as (speaker, text), the last client message) of an OpenAI messages list."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadRequest(f"{where}: messages[{i}].content must be a string")
        if m.get("role") == "system":
            continue
        if m.get("role") not in _ROLE:
            raise ValueError(f"{where}: messages[{i}].role must be system, user or assistant")
        turns.append((_ROLE[m["role"]], m["content"]))
    if not turns or turns[-1][0] != "client" or not turns[-1][1].strip():
        raise ValueError(f"{where}: the last message must be the client's (role 'user'), not empty")
    return turns[:-1], turns[-1][1]


def make_app(
    served: serving.Served,
    ask,
    sessions: store.Sessions,
    *,
    on_crisis: str = "refer",
    country: str | None = None,
    referral: dict | None = None,
    token: str | None = None,
    second_opinion=None,
):
    """The FastAPI app: /v1/chat/completions, /v1/models, /sessions/{id} and the page at /.

    second_opinion(text) -> safety.Screen: the run's remote LLM asked about a message the screen
    does not flag (mi_llm.chat.safety_llm), or None.

    ask(messages, body) -> (reply, finish_reason, usage, meta) answers a client message
    (http_backend or conditioned_backend); meta is saved with the counselor's turn. token: the
    bearer token every request must carry (None: none asked; guard.check_headers).
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse

    from mi_llm.eval import forecast

    if on_crisis not in ON_CRISIS:
        raise ValueError(f"on_crisis {on_crisis!r}: one of {ON_CRISIS}")
    texts = referrals.render_all(referral or referrals.referral_config(), country)
    model_id = f"{served.model}:{served.variant}"
    page = _page(served, model_id, texts)
    app = FastAPI(title="mi-llm chat")

    @app.middleware("http")
    async def trust_no_browser(request: Request, call_next):
        try:
            by_query = guard.check_headers(
                request.method, request.url.path, request.url.query, request.headers, token
            )
        except guard.Refused as e:
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        response = await call_next(request)
        if by_query:  # the page opened as /?token=...: its own requests carry the cookie
            response.set_cookie(guard.COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/v1/models")
    def list_models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "owned_by": "mi-llm", **served.meta()}],
        }

    @app.get("/sessions/{sid}")
    def get_session(sid: str):
        f = sessions.folder / f"{sid}.jsonl"
        if not store.SESSION_ID.fullmatch(sid) or not f.exists():
            raise HTTPException(404, f"no session {sid!r}")
        return JSONResponse(json.loads(f.read_text(encoding="utf-8").splitlines()[0]))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await guard.read_json(request)
            guard.check_body(body)
        except guard.Refused as e:
            raise HTTPException(e.status, str(e)) from None
        if body.get("model") not in (None, model_id):
            raise HTTPException(
                400, f"model {body.get('model')!r} is not served here; served: [{model_id!r}]"
            )
        if body.get("stream"):
            raise HTTPException(400, "stream: true is not supported; ask without streaming")
        label = body.get("mi_behaviour")
        if label is not None and (served.variant != "conditioned" or label not in forecast.TAGS):
            raise HTTPException(
                400,
                f"mi_behaviour {label!r}: the conditioned variant takes one of {list(forecast.TAGS)}",
            )
        try:
            history, client_text = _history(body.get("messages"))
            sid = body.get("user") or request.headers.get("x-session-id")
            s = sessions.find(sid, history)  # the id's characters are checked there
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        import anyio

        return await anyio.to_thread.run_sync(_answer, s, history, client_text, body)

    def _answer(s: store.Session, history, client_text: str, body: dict):
        with s.lock:
            scr, meta = safety.screen(client_text), {}
            if not scr.flagged and second_opinion is not None:
                try:
                    scr = safety.combine(scr, second_opinion(client_text))
                except Exception as e:  # noqa: BLE001  the default screen's answer stands
                    meta["second_opinion_error"] = f"{type(e).__name__}: {e}"[:500]
            meta, event, usage, finish = {**meta, "screen": scr.to_dict()}, None, {}, "stop"
            if scr.flagged:
                # the referral and its log come first, whatever the model does after
                text, lang = referrals.pick(texts, scr.category, client_text)
                event = {
                    "type": "crisis_referral",
                    "category": scr.category,
                    "construct": scr.construct,
                    "evidence": scr.evidence,
                    "rule": scr.rule,
                    "source": scr.source,
                    "language": lang,
                    "action": on_crisis,
                    "text": client_text,
                }
                referrals.log_event(sessions.folder, {**event, "session": s.id, "model": model_id})
                meta.update(referral=True, language=lang)
                if on_crisis == "refer_then_reply":
                    try:
                        reply, finish, usage, extra = ask(
                            serving.with_system(served, body["messages"]), body
                        )
                        text = text + "\n\n" + reply
                        meta.update(extra, model_reply=reply)
                    except Exception as e:  # noqa: BLE001  the referral stands without the model's reply
                        meta.update(model_error=f"{type(e).__name__}: {e}"[:500])
            else:
                t0 = time.perf_counter()
                text, finish, usage, extra = ask(
                    serving.with_system(served, body["messages"]), body
                )
                meta.update(extra, latency_s=round(time.perf_counter() - t0, 3))
            meta.update(model=served.model, variant=served.variant, finish_reason=finish)
            s = sessions.record(s, history, client_text, text, meta, event)  # s, or its fork
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:16],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "mi_llm": {
                "session": s.id,
                "session_file": str(s.file),
                "screen": scr.to_dict(),
                "referral": scr.flagged,
            },
        }

    return app


def _page(served: serving.Served, model_id: str, texts: dict) -> str:
    """The chat page: the run, model and variant it serves, the disclaimer and crisis line in
    Chinese and English (the page shows the conversation's language), a smoke model said so."""
    import html

    from mi_llm.models import embedded

    page = files("mi_llm").joinpath("templates/chat.html").read_text(encoding="utf-8")
    smoke = served.model == embedded.NAME
    values = {
        "model_id": model_id,
        "run": Path(served.run_dir).name,
        "model": served.model,
        "variant": served.variant,
        "line_zh": texts[("hotline", "zh")],
        "line_en": texts[("hotline", "en")],
        "smoke": "smoke" if smoke else "",
    }
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    return page


# ----------------------------------------------------------------------------- serving it
@dataclass
class Chat:
    url: str  # http://127.0.0.1:<port>; the OpenAI base URL is url + "/v1"
    served: serving.Served
    sessions: store.Sessions
    model_id: str

    history: list = field(default_factory=list)  # talk()'s conversation so far
    session: str | None = None  # talk()'s session id, set by the first answer
    stop: object = None  # start(): stops the servers
    token: str | None = None  # the bearer token the chat asks for, if any

    def talk(self, text: str, **settings) -> str:
        """One turn of a conversation kept here (notebooks): send, remember, return the reply."""
        out = self.say(text, self.history, self.session, **settings)
        reply = out["choices"][0]["message"]["content"]
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.session = out["mi_llm"]["session"]
        return reply

    def say(
        self, text: str, history: list[dict] | None = None, session: str | None = None, **settings
    ) -> dict:
        """Send one client message (with the conversation so far); the endpoint's JSON answer."""
        import httpx

        msgs = (history or []) + [{"role": "user", "content": text}]
        body = {
            "model": self.model_id,
            "messages": msgs,
            **({"user": session} if session else {}),
            **settings,
        }
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.post(self.url + "/v1/chat/completions", json=body, headers=auth, timeout=600)
        r.raise_for_status()
        return r.json()


@contextlib.contextmanager
def serve(
    run_dir,
    model: str | None = None,
    variant: str = "finetuned",
    port: int = 0,
    *,
    on_crisis: str = "refer",
    country: str | None = None,
    referral_file=None,
    backend_url: str | None = None,
    backend_model: str | None = None,
    log_dir=None,
    serve_timeout: float = 300.0,
    max_tokens: int = 256,
    device: str | None = None,
    token: str | None = None,
    second_opinion: bool = True,
    no_repeat_ngram: int = serving.NO_REPEAT_NGRAM,
):
    """Serve a run's model with the chat in front, on 127.0.0.1 (a background thread); yield a Chat.

    token: the bearer token every request must carry (default: $MI_LLM_CHAT_TOKEN; none if unset).
    second_opinion: when the run's LLM is a remote model, it classifies every message the default
    screen leaves unflagged (cached in the run's answer cache); without its API key the chat says
    so and screens without it.

    backend_url: an already running OpenAI-compatible server for the model (tests; vLLM on a GPU),
    instead of starting `transformers serve`; backend_model: the model name its requests carry
    (e.g. vLLM's LoRA module name; default: the served folder's path). The conditioned variant
    needs neither: it is generated in this process on `device` (default: the run's device).
    no_repeat_ngram: no span of this many tokens appears twice in the conversation
    (GenerationConfig.no_repeat_ngram_size, the guard against a repetition loop; 0: off). The
    `transformers serve` the chat starts then generates sequentially, which applies it.
    """
    import uvicorn

    from mi_llm.llm import api

    if variant == "conditioned" and backend_url is not None:
        raise ValueError(
            "variant 'conditioned' is generated in this process (its reply starts with the "
            "behaviour tag, which an OpenAI endpoint cannot prefill); drop backend_url"
        )
    token = guard.token_from_env(token)  # a short token fails now, before any model loads
    serving.anti_loop(no_repeat_ngram)  # a negative size fails now
    served = serving.resolve(run_dir, model, variant, merge=backend_url is None)
    referral = referrals.referral_config(referral_file)
    referrals.render_all(referral, country)  # a bad reply or unknown country fails now
    safety.screen("")  # the learned layer's encoder loads now, not at the first client's message
    sessions = store.Sessions(Path(run_dir) / "chat", served.meta())
    with contextlib.ExitStack() as stack:
        opinion = None
        if second_opinion:
            try:
                opinion, close = safety_llm.second_opinion(serving.run_params(run_dir))
                stack.callback(close)
            except RuntimeError as e:  # no API key: the default screen alone
                print(f"[mi_llm] crisis screen without the LLM second opinion: {e}", flush=True)
        if variant == "conditioned":
            ask = serving.conditioned_backend(
                served,
                device or serving.run_params(run_dir).device,
                max_tokens,
                no_repeat_ngram=no_repeat_ngram,
            )
        else:
            if backend_url is None:
                backend_url = stack.enter_context(
                    api.serve(
                        served.folder,
                        timeout=serve_timeout,
                        log_dir=log_dir or Path(run_dir) / "chat" / "logs",
                        continuous_batching=not no_repeat_ngram,
                    )
                )
            ask = serving.http_backend(
                backend_url,
                backend_model or str(served.folder),
                max_tokens,
                no_repeat_ngram=no_repeat_ngram,
            )
        app = make_app(
            served,
            ask,
            sessions,
            on_crisis=on_crisis,
            country=country,
            referral=referral,
            token=token,
            second_opinion=opinion,
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port or api._free_port(), log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        t0 = time.monotonic()
        while not server.started:
            if not thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError(f"the chat server did not start on 127.0.0.1:{config.port}")
            time.sleep(0.05)
        try:
            yield Chat(
                f"http://127.0.0.1:{config.port}",
                served,
                sessions,
                f"{served.model}:{served.variant}",
                token=token,
            )
        finally:
            server.should_exit = True
            thread.join(timeout=15)


def start(run_dir, model: str | None = None, variant: str = "finetuned", **kw) -> Chat:
    """serve() without a with-block (notebooks): the servers run until chat.stop() or exit."""
    stack = contextlib.ExitStack()
    c = stack.enter_context(serve(run_dir, model, variant, **kw))
    c.stop = stack.close
    return c


def main(run_dir, model=None, variant="finetuned", port=8765, **kw) -> None:
    """The `python -m mi_llm chat` command: serve until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # kill <pid> stops the model server too
    with serve(run_dir, model, variant, port, **kw) as c:
        print(
            f"[mi_llm] chat with {c.model_id} ({c.served.folder})\n"
            f"  page:     {c.url}/\n  endpoint: {c.url}/v1  (model {c.model_id!r})\n"
            f"  sessions: {c.sessions.folder}/\n  Ctrl-C to stop",
            *(
                ["  token:    asked for (open the page once as /?token=<your token>)"]
                if c.token
                else []
            ),
            sep="\n",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
