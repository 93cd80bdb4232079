"""The `server` engine: replies from an OpenAI-compatible `/v1/completions` endpoint (vLLM,
SGLang, TGI) that a user already runs.

Prompts are rendered here by the registry's chat templates and sent as raw text (so a reply can
start with a prefix, such as the conditioned variant's behaviour tag), a batch of prompts per
request. The request's `model` picks what the server answers with: the base model under the
registry name, the stage 03 LoRA adapter under `<name>-sft` (`model_name`; vLLM's
`--lora-modules <name>-sft=<adapter dir>`). Two vLLM sampling extras go with every request:
`add_special_tokens: false` (the template already wrote <bos>) and `stop_token_ids` (the chat
template's turn markers end a reply, as in the hf and cpu engines). See docs/decoding.md.
"""

from __future__ import annotations

from dataclasses import dataclass

ADAPTER_SUFFIX = "-sft"  # the served name of a model's stage 03 adapter: <registry name>-sft

# GenerationConfig fields -> the completions request's names (OpenAI's, then vLLM's extras)
SETTINGS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "min_new_tokens": "min_tokens",
}


class ServerError(RuntimeError):
    """The completions server is unreachable, lacks a model, or answered with an error."""


@dataclass
class Endpoint:
    """A completions server and the model name a request asks it for."""

    url: str  # the base URL, ".../v1"
    model: str  # a served model name: the base model, or a LoRA module (the adapter)
    timeout: float = 600.0


def model_name(name: str, adapted: bool) -> str:
    """The served name of a registry model: itself, or `<name>-sft` for its stage 03 adapter."""
    return name + ADAPTER_SUFFIX if adapted else name


def served_models(url: str, timeout: float = 30.0) -> list[str]:
    """The model names the server lists at GET <url>/models."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/models", timeout=timeout)
    except httpx.HTTPError as e:
        raise ServerError(
            f"{url}: no OpenAI-compatible server answers ({type(e).__name__}: {e}). Start one "
            "(docs/decoding.md: vllm serve ... --enable-lora --lora-modules ...) or set "
            "evaluation.engine to hf or cpu."
        ) from None
    if r.status_code != 200:
        raise ServerError(f"{url}/models: the server answered {r.status_code}: {r.text[:300]}")
    return [m["id"] for m in r.json().get("data", [])]


def check_models(url: str, names: list[str]) -> None:
    """Raise ServerError naming the models the server does not serve (before any request costs)."""
    served = served_models(url)
    missing = [n for n in names if n not in served]
    if missing:
        raise ServerError(
            f"{url}: the server does not serve {missing} (it serves {served}). Serve the base "
            f"model as its registry name and each stage 03 adapter as <name>{ADAPTER_SUFFIX}, "
            "e.g. vllm serve <weights> --served-model-name <name> --enable-lora --lora-modules "
            f"<name>{ADAPTER_SUFFIX}=runs/<run>/03_sft/<name>/adapter (docs/decoding.md)."
        )


def request_settings(
    overrides: dict | None, max_new_tokens: int, stop_ids: list[int], seed: int | None = None
) -> dict:
    """The sampling fields of a completions request: greedy (temperature 0) unless `overrides`
    (evaluation.generation, GenerationConfig names) samples; a field without a completions
    equivalent raises ValueError naming it."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SETTINGS) - {"do_sample"})
    if unknown:
        raise ValueError(
            f"evaluation.generation: {unknown} have no /v1/completions equivalent (engine "
            f"'server' takes do_sample, {', '.join(SETTINGS)}); use engine hf or cpu"
        )
    out = {"max_tokens": max_new_tokens, "stop_token_ids": stop_ids, "add_special_tokens": False}
    if overrides.pop("do_sample", False):
        out.update({SETTINGS[k]: v for k, v in overrides.items()})
        out.setdefault("temperature", 1.0)  # GenerationConfig's default when sampling
        if seed is not None:
            out["seed"] = seed
    else:
        out.update({SETTINGS[k]: v for k, v in overrides.items() if k not in ("temperature",)})
        out["temperature"] = 0.0
        for k in ("top_p", "top_k"):  # greedy: no sampling knobs
            out.pop(k, None)
    return out


def complete(endpoint: Endpoint, texts: list[str], settings: dict) -> list[tuple[str, str]]:
    """(text, finish_reason) of each prompt text, in order: one POST <url>/completions."""
    import httpx

    body = {"model": endpoint.model, "prompt": texts, **settings}
    try:
        r = httpx.post(
            endpoint.url.rstrip("/") + "/completions", json=body, timeout=endpoint.timeout
        )
    except httpx.HTTPError as e:
        raise ServerError(f"{endpoint.url}/completions: {type(e).__name__}: {e}") from None
    if r.status_code != 200:
        raise ServerError(
            f"{endpoint.url}/completions (model {endpoint.model!r}) answered {r.status_code}: "
            f"{r.text[:500]}"
        )
    choices = r.json().get("choices") or []
    if len(choices) != len(texts):
        raise ServerError(
            f"{endpoint.url}/completions: {len(choices)} choices for {len(texts)} prompts"
        )
    out = [None] * len(texts)
    for c in choices:
        out[c["index"]] = (c.get("text") or "", c.get("finish_reason") or "stop")
    return out


def generate_batches(
    endpoint: Endpoint,
    texts: list[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    overrides: dict | None,
    stop_ids: list[int],
    seed: int | None = None,
):
    """Yield (indices, replies) per batch of prompt texts, in the given order."""
    settings = request_settings(overrides, max_new_tokens, stop_ids, seed)
    for s in range(0, len(texts), batch_size):
        idx = list(range(s, min(s + batch_size, len(texts))))
        yield idx, [t.strip() for t, _ in complete(endpoint, [texts[i] for i in idx], settings)]
