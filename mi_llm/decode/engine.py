"""The decoding interface: a model's generation config, chat prompts as text, and replies in
batches from one of three engines (evaluation.engine, docs/decoding.md):

  hf      transformers' `generate` on left-padded batches (the reference; the default on CUDA)
  cpu     the project's CPU loop (mi_llm.decode.cpu) for plain greedy decoding, shared prompt
          starts encoded once; anything else (sampling, penalties) goes to `generate` as in hf
          (the default on a CPU)
  server  an OpenAI-compatible /v1/completions endpoint (mi_llm.decode.server): `model` is then a
          server.Endpoint, the tokenizer renders the prompts
"""

from __future__ import annotations

from mi_llm.decode import cpu, server

ENGINES = ("hf", "cpu", "server")


def resolve(engine: str, device) -> str:
    """The engine that runs: `auto` is cpu on a CPU device and hf on CUDA (or any other)."""
    if engine == "auto":
        return "cpu" if str(device).split(":")[0] == "cpu" else "hf"
    if engine not in ENGINES:
        raise ValueError(f"evaluation.engine: {engine!r} is not one of {['auto', *ENGINES]}")
    return engine


def _device(model) -> str:
    return next(model.parameters()).device.type


# ----------------------------------------------------------------------------- generation
def generation_config(
    model, tokenizer, max_new_tokens: int, overrides: dict | None = None, stop_tokens=()
):
    """The model's GenerationConfig made greedy (unless `overrides` samples), with a pad token,
    stopping at its eos ids and at `stop_tokens` (the chat template's turn markers)."""
    import copy

    cfg = copy.deepcopy(model.generation_config)
    cfg.do_sample = False
    cfg.max_new_tokens = max_new_tokens
    cfg.pad_token_id = tokenizer.pad_token_id
    for k, v in (overrides or {}).items():
        if not hasattr(cfg, k):
            raise ValueError(
                f"evaluation.generation: {k!r} is not a transformers GenerationConfig field"
            )
        setattr(cfg, k, v)
    # a reply also ends where the model opens a new turn (a base model writes <start_of_turn>user
    # rather than <end_of_turn>): stopping there changes no token before it and saves the rest
    stops = _eos_ids(cfg) | {tokenizer.convert_tokens_to_ids(t) for t in stop_tokens}
    cfg.eos_token_id = sorted(i for i in stops if i is not None and i != tokenizer.unk_token_id)
    if not cfg.do_sample:  # sampling knobs would only draw warnings in greedy mode
        cfg.temperature, cfg.top_p, cfg.top_k = None, None, None
    return cfg


def stop_ids(tokenizer, stop_tokens=()) -> list[int]:
    """The token ids that end a reply without a model at hand (engine server): the tokenizer's
    eos and the chat template's turn markers."""
    ids = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(t) for t in stop_tokens}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def _eos_ids(cfg) -> set[int]:
    eos = cfg.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


def prompt_texts(
    tokenizer, prompts: list[list[dict]], prefixes: list[str] | None = None
) -> list[str]:
    """Chat-template texts ending in the generation prompt, each followed by its prefix (if any)."""
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    if prefixes is not None:
        if len(prefixes) != len(texts):
            raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} prompts")
        texts = [t + x for t, x in zip(texts, prefixes)]
    return texts


def generate_batches(
    model,
    tokenizer,
    prompts: list[list[dict]],
    *,
    engine: str = "auto",
    batch_size: int = 16,
    max_new_tokens: int = 256,
    overrides: dict | None = None,
    stop_tokens=(),
    prefixes: list[str] | None = None,
    seed: int | None = None,
):
    """Yield (indices into prompts, replies) per batch.

    engine cpu, greedy decoding (the default): `greedy_rows`; the rounds of a dialogue, whose
    prompts extend one another, go into the same batch, and what they share is encoded once.
    engine hf, and cpu with sampling, beams or processors from `overrides`: transformers'
    `generate` on left-padded batches, longest prompts first. engine server: `model` is a
    server.Endpoint; batches in prompt order, `seed` sent when sampling.
    prefixes: text put after each prompt's generation prompt (the reply starts with it; the
    returned reply is what the model wrote after it).
    """
    if isinstance(model, server.Endpoint) != (engine == "server") and engine != "auto":
        raise TypeError(
            f"engine {engine!r} with a {type(model).__name__}: engine server takes a "
            "server.Endpoint, hf and cpu a loaded model"
        )
    engine = "server" if isinstance(model, server.Endpoint) else resolve(engine, _device(model))
    texts = prompt_texts(tokenizer, prompts, prefixes)
    if engine == "server":
        yield from server.generate_batches(
            model,
            texts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            overrides=overrides,
            stop_ids=stop_ids(tokenizer, stop_tokens),
            seed=seed,
        )
        return
    cfg = generation_config(model, tokenizer, max_new_tokens, overrides, stop_tokens)
    eos = _eos_ids(cfg)
    # the template already writes <bos> etc., so no special tokens are added again
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # engine cpu, plain greedy decoding (no sampling, penalties or other processors): our loop;
    # anything else goes to transformers' generate
    greedy_loop = engine == "cpu" and not overrides and cpu.plain_greedy(cfg)
    if greedy_loop:  # a dialogue's rounds together: their history is encoded once
        batches = cpu.batches_by_prefix(ids, batch_size)
    else:  # longest first (an out-of-memory shows early), similar lengths padded together
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in batches:
        rows = new_tokens(
            model,
            tokenizer,
            [ids[i] for i in idx],
            [texts[i] for i in idx],
            "greedy" if greedy_loop else None,
            eos,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=cfg.pad_token_id,
            generation_config=cfg,
        )
        replies = []
        for row in rows:  # the new tokens of each prompt
            stop = next((j for j, t in enumerate(row) if t in eos), len(row))
            replies.append(tokenizer.decode(row[:stop], skip_special_tokens=True).strip())
        yield idx, replies


def new_tokens(model, tokenizer, ids, texts, loop: str | None, eos: set[int], **generate_kw):
    """The new tokens of each prompt of one batch: our loop on the token ids (loop "greedy":
    `greedy_rows`; "sample": `sampled_rows` at generate_kw's temperature and top_p), else (None)
    transformers' `generate` on the left-padded texts (generate_kw: max_new_tokens, pad_token_id,
    and the rest of generate's keywords)."""
    import torch

    n, pad = generate_kw["max_new_tokens"], generate_kw["pad_token_id"]
    with torch.inference_mode():
        if loop == "greedy":
            return cpu.greedy_rows(model, ids, n, eos, pad)
        if loop == "sample":
            t, top_p = generate_kw["temperature"], generate_kw.get("top_p") or 1.0
            return cpu.sampled_rows(model, ids, n, eos, pad, t, top_p)
        tokenizer.padding_side = "left"  # decoder-only: the new tokens must follow every prompt
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(next(model.parameters()).device)
        if "generation_config" in generate_kw:  # it holds max_new_tokens and pad_token_id
            generate_kw = {
                k: v for k, v in generate_kw.items() if k not in ("max_new_tokens", "pad_token_id")
            }
        return model.generate(**enc, **generate_kw)[:, enc["input_ids"].shape[1] :].tolist()


def generate(model, tokenizer, prompts: list[list[dict]], **kw) -> list[str]:
    """Replies to chat prompts, in prompt order (see generate_batches for the keywords)."""
    replies = [""] * len(prompts)
    for idx, batch in generate_batches(model, tokenizer, prompts, **kw):
        for i, r in zip(idx, batch):
            replies[i] = r
    return replies
