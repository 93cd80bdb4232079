"""The run's model behind the chat: which model, variant and adapter a run serves (from its
provenance), the base weights with the LoRA adapter merged in (cached once per adapter hash), and
the two backends that answer: an OpenAI-compatible server, or in-process generation for the
conditioned variant (whose reply starts with a behaviour tag an endpoint cannot prefill)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mi_llm import stages
from mi_llm.data.schema import DataError

VARIANTS = ("base", "finetuned", "conditioned")
ADAPTED = ("finetuned", "conditioned")  # variants that answer with the 03 adapter
# The chat's guard against a repetition loop: no span of this many tokens appears twice in the
# conversation (prompt and reply), transformers' GenerationConfig.no_repeat_ngram_size. A loop of
# any period is stopped before its copy reaches this length; a reply may still reuse a stem
# ("It sounds like you ...") shorter than it. 0 turns it off.
NO_REPEAT_NGRAM = 10


def anti_loop(no_repeat_ngram: int) -> dict:
    """The generation settings (GenerationConfig fields) that stop a repetition loop."""
    if no_repeat_ngram < 0:
        raise ValueError(f"no_repeat_ngram: {no_repeat_ngram} is negative (0 turns it off)")
    return {"no_repeat_ngram_size": int(no_repeat_ngram)} if no_repeat_ngram else {}


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
    from mi_llm import params

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
    from mi_llm.models import embedded, registry
    from mi_llm.models.tokenizer_files import save_tokenizer

    target = embedded.cache_root() / "merged" / f"{model}-{sha[:16]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            from peft import PeftModel

            m, tok = registry.load(model, "cpu", path=base_folder)
            if (adapter / "tokenizer_config.json").exists():
                tok = registry.load_tokenizer(model, adapter)
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
    from mi_llm.models import registry
    from mi_llm.params import path

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: the chat serves one of {VARIANTS}")
    P = run_params(run_dir)
    model = model or (P.evaluation.models or P.sft.models)[0]
    base = (
        path(P.model_paths[model]) if model in P.model_paths else Path(registry.weights_path(model))
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


def with_system(served: Served, messages: list[dict]) -> list[dict]:
    """The request's messages, led by the run's system prompt unless the request brings its own."""
    if served.system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": served.system}, *messages]
    return messages


def http_backend(
    backend_url: str,
    backend_model: str,
    max_tokens: int = 256,
    timeout=600.0,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
):
    """ask(messages, body) -> (reply, finish_reason, usage, meta) from an OpenAI-compatible server.

    no_repeat_ngram goes in the request's `generation_config` field (a JSON string of
    GenerationConfig fields), which `transformers serve` applies on top of the model's own when it
    generates sequentially (not with --continuous-batching, whose per-request settings are only
    temperature, top_k and top_p); a server without that field (vLLM) ignores it."""
    import httpx
    from fastapi import HTTPException

    client = httpx.Client(timeout=timeout)
    settings = anti_loop(no_repeat_ngram)

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
        if settings:
            req["generation_config"] = json.dumps(settings)
        r = client.post(backend_url.rstrip("/") + "/chat/completions", json=req)
        if r.status_code != 200:
            raise HTTPException(502, f"model server answered {r.status_code}: {r.text[:500]}")
        out = r.json()
        choice = out["choices"][0]
        reply = (choice["message"]["content"] or "").strip()
        return reply, choice.get("finish_reason") or "stop", out.get("usage") or {}, {}

    return ask


def conditioned_backend(
    served: Served,
    device: str = "cpu",
    max_tokens: int = 256,
    engine: str | None = None,
    server_url: str | None = None,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
):
    """ask(messages, body) for the conditioned variant: stage 04's generation
    (engine.generate_batches) with the behaviour's tag `<mi:label>` as the reply's prefix.

    engine (default: the run's evaluation.engine, and its server_url): hf or cpu generate in this
    process with the merged weights; server sends the rendered prompt, tag included, to the
    completions server's `<model>-sft` (the adapter, mi_llm.decode.server).
    The behaviour is the request's `mi_behaviour`, else the run's `evaluation.condition_on`: a
    fixed label, or the forecaster stage 04 trained (forecaster.joblib) on the conversation so far.
    no_repeat_ngram: engines hf and cpu generate with GenerationConfig.no_repeat_ngram_size; a
    completions server (engine server) has no such field, so it is not sent there.
    """
    import torch

    from mi_llm.decode import engine as decode
    from mi_llm.decode import server
    from mi_llm.eval import forecast, generation
    from mi_llm.models import registry

    E = run_params(served.run_dir).evaluation
    engine = decode.resolve(engine or E.engine, generation.resolve_device(device))
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
    if engine == "server":
        url = server_url or E.server_url
        if not url:
            raise ValueError("engine server: no server_url (evaluation.server_url of the run)")
        model = server.Endpoint(url, server.model_name(served.model, adapted=True))
        server.check_models(url, [model.model])
        has_tok = (served.adapter / "tokenizer_config.json").exists()
        tok = registry.load_tokenizer(
            served.model, served.adapter if has_tok else served.base_folder
        )
    else:
        model, tok = registry.load(
            served.model, generation.resolve_device(device), path=served.folder
        )
        if served.folder == served.base_folder:  # not merged on disk (merge=False): in memory
            model, tok = generation._with_adapter(model, tok, served.model, served.adapter)
        model.eval()
    stops = registry.get(served.model).special_tokens
    settings = anti_loop(no_repeat_ngram) if engine != "server" else {}
    lock = threading.Lock()  # one generation at a time on the one model

    def ask(messages: list[dict], body: dict):
        label = body.get("mi_behaviour") or (
            served.condition_on
            if bundle is None
            else forecast.predict_next(bundle, generation._window(messages, None))
        )
        overrides = dict(settings)
        if body.get("temperature"):
            overrides.update(do_sample=True, temperature=float(body["temperature"]))
            if body.get("top_p") is not None:
                overrides["top_p"] = float(body["top_p"])
        with lock:
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            t0 = time.perf_counter()
            [reply] = decode.generate(
                model,
                tok,
                [messages],
                engine=engine,
                seed=body.get("seed"),
                batch_size=1,
                max_new_tokens=body.get("max_tokens") or max_tokens,
                overrides=overrides,
                stop_tokens=stops,
                prefixes=[generation.tag_prefix(label)],
            )
        _, reply = generation.split_tag(reply)
        n = len(tok(reply, add_special_tokens=False)["input_ids"])
        usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
        finish = "length" if n >= (body.get("max_tokens") or max_tokens) else "stop"
        meta = {"behaviour": label, "generate_s": round(time.perf_counter() - t0, 3)}
        return reply.strip(), finish, usage, meta

    return ask
