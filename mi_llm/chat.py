"""Talk to a run's model: an OpenAI-compatible endpoint and a chat page on 127.0.0.1, crisis-screened.

    python -m mi_llm chat runs/smoke [--model gemma3-270m] [--variant finetuned] [--port 8765]

The run's model (its `provenance.json` params name the models and their weights) is served with
`transformers serve` (mi_llm.llm.serve). `transformers serve` loads plain model folders, so the
finetuned variant serves the base weights with stage 03's LoRA adapter merged in, cached once per
adapter hash under ~/.cache/mi-llm/merged/. The conditioned variant (stage 04's third variant)
needs its reply to start with the behaviour tag `<mi:label>`, which an OpenAI endpoint cannot
prefill, so it is generated in this process with the same merged weights and the same code as
stage 04 (generate.generate_batches with the tag as prefix). Each reply's behaviour is the run's
`evaluation.condition_on`: a fixed label, or `forecaster` (04's forecaster.joblib on the
conversation so far); a request may name one with the extra field `mi_behaviour`. The tag is
cut from the reply and saved as the turn's behaviour. In front of either, a small FastAPI app

- answers `POST /v1/chat/completions` and `GET /v1/models` like any OpenAI endpoint (curl, the
  `openai` package), non-streaming;
- screens every client message (mi_llm.safety.screen); a flagged one gets the fixed referral reply
  in the conversation's language with the configured crisis line, instead of the model's reply
  (`on_crisis="refer"`) or before it (`"refer_then_reply"`), and the event is logged;
- saves every session as one `schema.Dialogue` line in `runs/<name>/chat/<session>.jsonl`
  (rewritten after each turn) with the model, variant, adapter hash, timestamps and crisis events;
- serves the chat page (`templates/chat.html`) at `/`.

A request names its session with the OpenAI `user` field; without one, a conversation continues
the session whose turns its history repeats, else it starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the handler's annotation here

from . import safety, stages
from .schema import SPEAKER_OF, DataError, Dialogue, Turn, validate

VARIANTS = ("base", "finetuned", "conditioned")
ADAPTED = ("finetuned", "conditioned")  # variants that answer with the 03 adapter
ON_CRISIS = ("refer", "refer_then_reply")
_ROLE = SPEAKER_OF


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------- the run's model
@dataclass
class Served:
    """What a chat serves: the run's model and variant, the weights and the adapter it came from."""

    run_dir: Path
    model: str
    variant: str
    base_folder: Path
    folder: Path  # the folder transformers serve loads (base, or base + adapter merged)
    adapter: Path | None = None
    adapter_sha256: str | None = None
    system: str | None = None  # the system prompt of the run's test dialogues, if any
    condition_on: str | None = None  # conditioned: a fixed behaviour label or "forecaster"

    def meta(self) -> dict:
        return {
            "run": str(self.run_dir),
            "model": self.model,
            "variant": self.variant,
            "base_weights": str(self.base_folder),
            "served_folder": str(self.folder),
            "adapter": str(self.adapter) if self.adapter else None,
            "adapter_sha256": self.adapter_sha256,
            "condition_on": self.condition_on,
        }


def run_params(run_dir):
    """The params a run was made with (its provenance.json), its name the folder's name."""
    from . import params

    prov = Path(run_dir) / "provenance.json"
    if not prov.exists():
        raise FileNotFoundError(
            f"{prov}: not a run folder (no provenance.json); run the study first"
        )
    data = json.loads(prov.read_text(encoding="utf-8")).get("params")
    if not isinstance(data, dict):
        raise DataError(prov, "file", "params", "missing or not a mapping")
    P = params.from_dict({**data, "name": Path(run_dir).name}, where=str(prov))
    return P


def adapter_sha256(adapter: Path) -> str:
    """sha256 over the adapter's config and weights: the identity of a fine-tuned variant."""
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        f = Path(adapter) / name
        if not f.exists():
            raise FileNotFoundError(
                f"{adapter}: no PEFT adapter ({name} missing); run stage 03 first"
            )
        h.update(name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def merged_folder(model: str, base_folder: Path, adapter: Path, sha: str) -> Path:
    """base + adapter merged into a plain model folder, cached by adapter hash (built once, locked)."""
    from . import embedded, models
    from .tokenizer_files import save_tokenizer

    target = embedded.cache_root() / "merged" / f"{model}-{sha[:16]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            from peft import PeftModel

            m, tok = models.load(model, "cpu", path=base_folder)
            if (adapter / "tokenizer_config.json").exists():
                tok = models.load_tokenizer(model, adapter)
            m = PeftModel.from_pretrained(m, str(adapter)).merge_and_unload()
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            m.save_pretrained(tmp)
            save_tokenizer(tok, tmp)
            (tmp / "mi_llm_merged.json").write_text(
                json.dumps(
                    {
                        "model": model,
                        "base_weights": str(base_folder),
                        "adapter": str(adapter),
                        "adapter_sha256": sha,
                    },
                    indent=1,
                ),
                encoding="utf-8",
            )
            tmp.rename(target)  # atomic: a half-written folder is never served
    return target


def _system_prompt(run_dir) -> str | None:
    test = Path(run_dir) / stages.TEST
    if not test.exists():
        return None
    with open(test, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                msgs = json.loads(line).get("messages") or []
                return msgs[0]["content"] if msgs and msgs[0].get("role") == "system" else None
    return None


def resolve(
    run_dir, model: str | None = None, variant: str = "finetuned", merge: bool = True
) -> Served:
    """The model a chat on a run serves: the run's first evaluated model unless named."""
    from . import models
    from .params import path

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: the chat serves one of {VARIANTS}")
    P = run_params(run_dir)
    model = model or (P.evaluation.models or P.sft.models)[0]
    base = (
        path(P.model_paths[model]) if model in P.model_paths else Path(models.weights_path(model))
    )
    served = Served(Path(run_dir), model, variant, base, base, system=_system_prompt(run_dir))
    if variant in ADAPTED:
        served.adapter = Path(run_dir) / stages.ADAPTER.format(model=model)  # stage 03's
        served.adapter_sha256 = adapter_sha256(served.adapter)
        if merge:
            served.folder = merged_folder(model, base, served.adapter, served.adapter_sha256)
    if variant == "conditioned":
        served.condition_on = P.evaluation.condition_on
    return served


# ----------------------------------------------------------------------------- sessions
@dataclass
class Session:
    id: str
    file: Path
    dialogue: Dialogue
    lock: threading.Lock = field(default_factory=threading.Lock)


class Sessions:
    """The chat's sessions, each saved as one schema.Dialogue line in <folder>/<id>.jsonl."""

    def __init__(self, folder, served_meta: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = served_meta
        self.open: dict[str, Session] = {}
        self.lock = threading.Lock()

    def _new(self, sid: str) -> Session:
        file = self.folder / f"{sid}.jsonl"
        if file.exists():  # a session named again after a restart continues its file
            d = Dialogue.from_dict(json.loads(file.read_text(encoding="utf-8").splitlines()[0]))
        else:
            d = Dialogue(
                sid,
                "chat",
                [],
                {**self.meta, "started": _now(), "events": []},
                {"file": str(file), "record": sid},
            )
        return Session(sid, file, d)

    def find(self, sid: str | None, history: list[tuple]) -> Session:
        """The named session, or the open one whose turns `history` repeats, or a new one."""
        with self.lock:
            if sid:
                if not all(c.isalnum() or c in "-_." for c in sid) or len(sid) > 100:
                    raise ValueError(
                        f"session id {sid!r}: letters, digits, - _ . only (100 at most)"
                    )
                if sid not in self.open:
                    self.open[sid] = self._new(sid)
                return self.open[sid]
            for s in self.open.values():
                turns = [(t.speaker, t.text) for t in s.dialogue.turns]
                if history and turns == history:
                    return s
            s = self._new(datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8])
            self.open[s.id] = s
            return s

    def record(
        self,
        s: Session,
        history: list[tuple],
        client: str,
        reply: str,
        turn_meta: dict,
        event: dict | None,
    ) -> None:
        """Set the session's turns to history + the client message + the reply; save it atomically."""
        d, now = s.dialogue, _now()
        old = d.turns
        turns = [
            old[i] if i < len(old) and (old[i].speaker, old[i].text) == h else Turn(h[0], h[1], {})
            for i, h in enumerate(history)
        ]
        turns.append(Turn("client", client, {"time": now, "screen": turn_meta["screen"]}))
        turns.append(
            Turn(
                "counselor",
                reply,
                {"time": _now(), **{k: v for k, v in turn_meta.items() if k != "screen"}},
            )
        )
        d.turns = turns
        d.meta["updated"] = _now()
        if event:
            d.meta["events"].append({**event, "time": now, "turn": len(turns) - 2})
        validate(d, s.file, s.id)
        tmp = s.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(d.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, s.file)


def read_sessions(folder) -> list[Dialogue]:
    """Every saved chat session of a folder (runs/<name>/chat/*.jsonl), oldest first."""
    from .schema import read_jsonl

    out = []
    for f in sorted(Path(folder).glob("*.jsonl")):
        for d in read_jsonl(f):
            validate(d, f, d.id)
            out.append(d)
    if not out:
        raise FileNotFoundError(f"{folder}: no chat sessions (*.jsonl); talk to the model first")
    return sorted(out, key=lambda d: d.meta.get("started") or "")


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


def with_system(served: Served, messages: list[dict]) -> list[dict]:
    """The request's messages, led by the run's system prompt unless the request brings its own."""
    if served.system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": served.system}, *messages]
    return messages


def http_backend(backend_url: str, backend_model: str, max_tokens: int = 256, timeout=600.0):
    """ask(messages, body) -> (reply, finish_reason, usage, meta) from an OpenAI-compatible server."""
    import httpx
    from fastapi import HTTPException

    client = httpx.Client(timeout=timeout)

    def ask(messages: list[dict], body: dict):
        req = {
            "model": backend_model,
            "messages": messages,
            "stream": False,
            "max_tokens": body.get("max_tokens") or max_tokens,
        }
        for k in ("temperature", "top_p", "seed", "stop"):
            if body.get(k) is not None:
                req[k] = body[k]
        r = client.post(backend_url.rstrip("/") + "/chat/completions", json=req)
        if r.status_code != 200:
            raise HTTPException(502, f"model server answered {r.status_code}: {r.text[:500]}")
        out = r.json()
        choice = out["choices"][0]
        reply = (choice["message"]["content"] or "").strip()
        return reply, choice.get("finish_reason") or "stop", out.get("usage") or {}, {}

    return ask


def conditioned_backend(served: Served, device: str = "cpu", max_tokens: int = 256):
    """ask(messages, body) for the conditioned variant, in this process: stage 04's generation
    (generate.generate_batches) with the behaviour's tag `<mi:label>` as the reply's prefix.

    The behaviour is the request's `mi_behaviour`, else the run's `evaluation.condition_on`: a
    fixed label, or the forecaster stage 04 trained (forecaster.joblib) on the conversation so far.
    """
    import torch

    from . import forecast, generate, models

    fc = served.run_dir / stages.FORECASTER_MODEL
    bundle = None
    if served.condition_on == "forecaster":
        if not fc.exists():
            raise FileNotFoundError(
                f"{fc}: no forecaster; the run's evaluation.condition_on is 'forecaster', so the "
                "conditioned chat asks stage 04's forecaster (evaluation.forecaster.enabled)"
            )
        bundle = forecast.load(fc)
    elif served.condition_on not in forecast.TAGS:
        raise ValueError(
            f"evaluation.condition_on: {served.condition_on!r} is not 'forecaster' or one of "
            f"{list(forecast.TAGS)}"
        )
    model, tok = models.load(served.model, generate.resolve_device(device), path=served.folder)
    if served.folder == served.base_folder:  # not merged on disk (merge=False): merge in memory
        model, tok = generate._with_adapter(model, tok, served.model, served.adapter)
    model.eval()
    stops = models.get(served.model).special_tokens
    lock = threading.Lock()  # one generation at a time on the one model

    def ask(messages: list[dict], body: dict):
        label = body.get("mi_behaviour") or (
            served.condition_on
            if bundle is None
            else forecast.predict_next(bundle, generate._window(messages, None))
        )
        overrides = {}
        if body.get("temperature"):
            overrides = {"do_sample": True, "temperature": float(body["temperature"])}
            if body.get("top_p") is not None:
                overrides["top_p"] = float(body["top_p"])
        with lock:
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            t0 = time.perf_counter()
            [reply] = generate.generate(
                model,
                tok,
                [messages],
                batch_size=1,
                max_new_tokens=body.get("max_tokens") or max_tokens,
                overrides=overrides,
                stop_tokens=stops,
                prefixes=[generate.tag_prefix(label)],
            )
        _, reply = generate.split_tag(reply)
        n = len(tok(reply, add_special_tokens=False)["input_ids"])
        usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
        finish = "length" if n >= (body.get("max_tokens") or max_tokens) else "stop"
        meta = {"behaviour": label, "generate_s": round(time.perf_counter() - t0, 3)}
        return reply.strip(), finish, usage, meta

    return ask


def make_app(
    served: Served,
    ask,
    sessions: Sessions,
    *,
    on_crisis: str = "refer",
    country: str | None = None,
    referral: dict | None = None,
):
    """The FastAPI app: /v1/chat/completions, /v1/models, /sessions/{id} and the page at /.

    ask(messages, body) -> (reply, finish_reason, usage, meta) answers a client message
    (http_backend or conditioned_backend); meta is saved with the counselor's turn.
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse

    from . import forecast

    if on_crisis not in ON_CRISIS:
        raise ValueError(f"on_crisis {on_crisis!r}: one of {ON_CRISIS}")
    referral = referral or safety.referral_config()
    model_id = f"{served.model}:{served.variant}"
    page = files("mi_llm").joinpath("templates/chat.html").read_text(encoding="utf-8")
    page = page.replace("{{model_id}}", model_id)
    app = FastAPI(title="mi-llm chat")

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
        if not f.exists() or "/" in sid:
            raise HTTPException(404, f"no session {sid!r}")
        return JSONResponse(json.loads(f.read_text(encoding="utf-8").splitlines()[0]))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise HTTPException(400, "request body is not JSON") from None
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
            s = sessions.find(sid, history)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        import anyio

        return await anyio.to_thread.run_sync(_answer, s, history, client_text, body)

    def _answer(s: Session, history, client_text: str, body: dict):
        with s.lock:
            scr = safety.screen(client_text)
            lang = safety.language(client_text)
            meta, event, usage, finish = {"screen": scr.to_dict()}, None, {}, "stop"
            if scr.flagged:
                text = safety.referral(lang, country, referral)
                event = {
                    "type": "crisis_referral",
                    "category": scr.category,
                    "evidence": scr.evidence,
                    "rule": scr.rule,
                    "language": lang,
                    "action": on_crisis,
                }
                meta.update(referral=True, language=lang)
                if on_crisis == "refer_then_reply":
                    reply, finish, usage, extra = ask(with_system(served, body["messages"]), body)
                    text = text + "\n\n" + reply
                    meta.update(extra, model_reply=reply)
            else:
                t0 = time.perf_counter()
                text, finish, usage, extra = ask(with_system(served, body["messages"]), body)
                meta.update(extra, latency_s=round(time.perf_counter() - t0, 3))
            meta.update(model=served.model, variant=served.variant, finish_reason=finish)
            sessions.record(s, history, client_text, text, meta, event)
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


# ----------------------------------------------------------------------------- serving it
@dataclass
class Chat:
    url: str  # http://127.0.0.1:<port>; the OpenAI base URL is url + "/v1"
    served: Served
    sessions: Sessions
    model_id: str

    history: list = field(default_factory=list)  # talk()'s conversation so far
    session: str | None = None  # talk()'s session id, set by the first answer
    stop: object = None  # start(): stops the servers

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
        r = httpx.post(self.url + "/v1/chat/completions", json=body, timeout=600)
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
):
    """Serve a run's model with the chat in front, on 127.0.0.1 (a background thread); yield a Chat.

    backend_url: an already running OpenAI-compatible server for the model (tests; vLLM on a GPU),
    instead of starting `transformers serve`; backend_model: the model name its requests carry
    (e.g. vLLM's LoRA module name; default: the served folder's path). The conditioned variant
    needs neither: it is generated in this process on `device` (default: the run's device).
    """
    import uvicorn

    from . import llm

    if variant == "conditioned" and backend_url is not None:
        raise ValueError(
            "variant 'conditioned' is generated in this process (its reply starts with the "
            "behaviour tag, which an OpenAI endpoint cannot prefill); drop backend_url"
        )
    served = resolve(run_dir, model, variant, merge=backend_url is None)
    referral = safety.referral_config(referral_file)
    if country:
        safety.referral(
            "en", country, referral
        )  # an unknown country fails now, not at the first crisis
    sessions = Sessions(Path(run_dir) / "chat", served.meta())
    with contextlib.ExitStack() as stack:
        if variant == "conditioned":
            ask = conditioned_backend(served, device or run_params(run_dir).device, max_tokens)
        else:
            if backend_url is None:
                backend_url = stack.enter_context(
                    llm.serve(
                        served.folder,
                        timeout=serve_timeout,
                        log_dir=log_dir or Path(run_dir) / "chat" / "logs",
                    )
                )
            ask = http_backend(backend_url, backend_model or str(served.folder), max_tokens)
        app = make_app(
            served, ask, sessions, on_crisis=on_crisis, country=country, referral=referral
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port or llm._free_port(), log_level="warning"
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
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
