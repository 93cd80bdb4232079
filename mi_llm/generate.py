"""Round-based generation of stage 04: one counselor reply per gold history, base and fine-tuned.

For each test dialogue of 02 (test.jsonl) and each counselor turn that answers a client turn, the
gold history up to that client turn is the prompt and the gold counselor turn the reference. Every
(model, variant) answers every round: batched, seeded, greedy unless params say otherwise, stopping
at the model's end-of-turn token. Greedy decoding is our loop (`greedy_rows`): what a batch's prompts share at
their start (a dialogue's earlier rounds) is encoded once, and a finished row leaves the batch. Records
are appended to generations.jsonl after each batch, and a re-run skips
the (model, variant, dialogue, round) keys already there, so an interrupted run resumes. Each
record carries a fingerprint of what made it (weights, adapter bytes, generation settings, context
window); resuming onto records with another fingerprint is an error, never a silent mix.

The `conditioned` variant (the KMI idea) is the fine-tuned model told which MI behaviour
to use: each round's behaviour comes from the forecaster (04's forecaster.joblib, on the round's
gold history) or is fixed by params (evaluation.condition_on), and its tag <mi:label> is written
after the generation prompt, so the model continues a reply that already starts with it. Replies
(and references from a tagged corpus) are stored without tags, with the label under "behaviour",
so every metric scores plain text.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import warnings
from pathlib import Path

from . import forecast, stages
from .params import VARIANTS  # generation order: the adapter is merged in once
from .schema import TAGS, DataError, read_split, strip_tag, tag_text

KEY = ("model", "variant", "dialogue_id", "round")
ADAPTED = ("finetuned", "conditioned")  # variants that answer with the 03 adapter
_ANY_TAG = re.compile(r"^\s*<mi:[^>\s]*>\s*")


def split_tag(text: str) -> tuple[str | None, str]:
    """(label, text) of a reply or reference; a malformed <mi:...> tag is cut off with label None."""
    try:
        label, rest = strip_tag(text)
    except ValueError:  # a model may invent a label: it is still not part of the reply's words
        label, rest = None, _ANY_TAG.sub("", text, count=1)
    return label, rest.strip()


def tag_prefix(label: str) -> str:
    """The generation prefix for a behaviour: its tag without the trailing space (tag_text adds one).

    Gemma tokenizes "<mi:x> 听" as ">", " ", "听" but "<mi:x> It" as ">", " It": a prefix ending at
    ">" leaves the model the next token it saw in training, in either language.
    """
    return tag_text("", label).rstrip()


# ----------------------------------------------------------------------------- rounds
def _window(history: list[dict], context_turns: int | None) -> list[dict]:
    """System message (if any) + the last `context_turns` messages, starting at a client turn."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = history[len(system) :]
    if context_turns is not None:
        turns = turns[-context_turns:] if context_turns > 0 else turns[-1:]
    while turns and turns[0]["role"] != "user":  # chat templates want user first (Gemma raises)
        turns = turns[1:]
    return system + turns


def rounds(
    records: list[dict],
    max_dialogues: int | None = None,
    max_rounds: int | None = None,
    context_turns: int | None = None,
) -> list[dict]:
    """Prompts of the round-based evaluation: {dialogue_id, round, topic, messages, reference}.

    A round is a counselor (assistant) message that directly follows a client (user) message; its
    prompt is the gold history before it (trimmed by `_window`), ending with that client message.
    Rounds are numbered 0, 1, ... per dialogue; max_rounds keeps the first ones.
    """
    out = []
    for rec in records[:max_dialogues] if max_dialogues is not None else records:
        msgs, n = rec["messages"], 0
        for i, m in enumerate(msgs):
            if max_rounds is not None and n >= max_rounds:
                break
            if m["role"] != "assistant" or i == 0 or msgs[i - 1]["role"] != "user":
                continue
            out.append(
                {
                    "dialogue_id": str(rec["id"]),
                    "round": n,
                    "topic": rec.get("topic"),
                    "messages": _window(msgs[:i], context_turns),
                    "reference": split_tag(m["content"])[1],
                }
            )  # a tagged corpus' tag is not scored
            n += 1
    return out


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
    batch_size: int = 16,
    max_new_tokens: int = 256,
    overrides: dict | None = None,
    stop_tokens=(),
    prefixes: list[str] | None = None,
):
    """Yield (indices into prompts, replies) per batch, longest prompts first.

    Greedy decoding (the default) runs `greedy_rows`: the rounds of a dialogue, whose prompts extend
    one another, go into the same batch, and what they share is encoded once. Anything else
    (sampling, beams, processors from `overrides`) goes to transformers' `generate` on left-padded
    batches.
    prefixes: text put after each prompt's generation prompt (the reply starts with it; the
    returned reply is what the model wrote after it).
    """
    cfg = generation_config(model, tokenizer, max_new_tokens, overrides, stop_tokens)
    eos = _eos_ids(cfg)
    texts = prompt_texts(tokenizer, prompts, prefixes)
    # the template already writes <bos> etc., so no special tokens are added again
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # plain greedy decoding (no sampling, penalties or other processors): our loop; anything else
    # goes to transformers' generate
    greedy_loop = not overrides and plain_greedy(cfg)
    if greedy_loop:  # a dialogue's rounds together: their history is encoded once
        batches = batches_by_prefix(ids, batch_size)
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
            return greedy_rows(model, ids, n, eos, pad)
        if loop == "sample":
            t, top_p = generate_kw["temperature"], generate_kw.get("top_p") or 1.0
            return sampled_rows(model, ids, n, eos, pad, t, top_p)
        tokenizer.padding_side = "left"  # decoder-only: the new tokens must follow every prompt
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(next(model.parameters()).device)
        return model.generate(**enc, **generate_kw)[:, enc["input_ids"].shape[1] :].tolist()


# ----------------------------------------------------------------------------- greedy decoding
# output-layer rows scored at a time when picking the greedy token: fp32 scores a chunk as
# weight @ hidden.T, bf16 and fp16 as hidden @ weight.T (see head_argmax)
VOCAB_CHUNK = {"float32": 2048, "reduced": 16384}
# GenerationConfig fields that add a logits processor: a config that sets any of them is not
# plain greedy decoding, and goes to transformers' generate
PROCESSORS = (
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "sequence_bias",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "min_length",
    "min_new_tokens",
    "exponential_decay_length_penalty",
)


def plain_greedy(cfg) -> bool:
    """Whether a GenerationConfig asks for greedy decoding and nothing else (`greedy_rows` runs it)."""
    from transformers import GenerationConfig

    default = GenerationConfig()
    return (
        not cfg.do_sample
        and (cfg.num_beams or 1) == 1
        and all(getattr(cfg, k, None) == getattr(default, k, None) for k in PROCESSORS)
    )


def prefill_plan(ids: list[list[int]]) -> list[tuple[int, int]]:
    """The order in which a batch's prompts are encoded, each with the number of leading tokens it
    takes from the one encoded before it: [(index, shared), ...].

    In lexicographic order a prompt shares with its predecessor at least as many leading tokens as
    with any earlier prompt, so one pass encodes every common prefix once: the instructions and
    few-shot examples of an LLM stage's requests, the history of a dialogue's rounds. At least the
    last token of each prompt is encoded, for the hidden state its first new token comes from.
    """
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    plan, prev = [], None
    for i in order:
        shared = 0
        if prev is not None:
            for a, b in zip(prev, ids[i]):
                if a != b:
                    break
                shared += 1
        plan.append((i, min(shared, len(ids[i]) - 1)))
        prev = ids[i]
    return plan


def batches_by_prefix(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ids in batches of batch_size: neighbours in lexicographic order together (what
    they share is encoded once, `prefill_plan`), the batch holding the longest prompt first (an
    out-of-memory shows early)."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return sorted(chunks, key=lambda c: -max(len(ids[i]) for i in c))


def head_argmax(model, hidden):
    """Greedy next token of each final hidden state (rows, d): the output layer with its scale and
    soft-cap, scored a vocabulary chunk at a time.

    The same argmax as the model's logits (the first index of the maximum). Each chunk contributes
    only its maximum per row (an index per row costs a chunk seven times more); the index is then
    looked up in the one chunk where each row's maximum first occurs. A CPU reduces a chunk fastest
    along contiguous memory in bf16 and fp16 (vocabulary-major bf16 chunks reduce 30x slower), and
    multiplies fp32 fastest as weight @ hidden.T (twice the speed of `hidden @ weight.T` at 16
    rows): fp32 chunks are (chunk, rows) blocks, reduced-precision ones (rows, chunk) blocks.
    """
    import torch

    from .models import logit_transform

    head = model.get_output_embeddings()
    scale, softcap = logit_transform(model.config)
    h = hidden.to(head.weight.dtype)
    (vocab, _), rows = head.weight.shape, h.shape[0]
    fp32 = h.dtype == torch.float32
    size = VOCAB_CHUNK["float32" if fp32 else "reduced"]
    chunks = -(-vocab // size)
    if fp32:  # chunk n is logits[n] (rows, size), a view of a contiguous (size, rows) block
        logits = h.new_empty(chunks, size, rows).transpose(1, 2)
    else:
        logits = h.new_empty(chunks, rows, size)
    if vocab % size:  # the end of the last chunk never wins
        logits[-1, :, vocab % size :] = -math.inf
    best = which = None
    for n, start in enumerate(range(0, vocab, size)):
        weight = head.weight[start : start + size]
        part = logits[n, :, : weight.shape[0]]
        if fp32:
            torch.mm(weight, h.T, out=part.T)
        else:
            torch.mm(h, weight.T, out=part)
        if head.bias is not None:
            part += head.bias[start : start + size]
        if scale != 1.0:
            part *= scale
        if softcap is not None:
            part.copy_(torch.tanh(part / softcap) * softcap)
        value = part.amax(-1)
        if best is None:
            best, which = value, torch.zeros_like(value, dtype=torch.long)
        else:
            better = value > best  # strictly: a tie keeps the earlier chunk, as argmax does
            best, which = torch.where(better, value, best), torch.where(better, n, which)
    picked = logits[which, torch.arange(rows, device=h.device)]  # (rows, size): the best chunks
    return which * size + picked.argmax(-1)


def head_probs(model, hidden, temperature: float, top_p: float = 1.0):
    """Next-token probabilities (rows, vocab) of each final hidden state (rows, d): the output layer's
    logits with its scale and soft-cap through transformers' temperature and top-p warpers (the
    least likely tokens whose mass is at most 1 - top_p get none; the most likely always stays)."""
    import torch

    from .models import logit_transform

    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.dtype)).float()
    scale, softcap = logit_transform(model.config)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    if top_p < 1.0:
        ascending, index = torch.sort(logits, descending=False)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, index, drop), float("-inf"))
    return logits.softmax(-1)


def draw(probs):
    """One token per row of probs (rows, vocab), drawn by inverse transform: a uniform number per
    row against the row's cumulative distribution (float64). The distribution `torch.multinomial`
    draws from, at one random number per row where it takes one per vocabulary entry (5.2M per step
    for 20 rows of Gemma's 262k vocabulary: 135 ms on 2 cores, against a few here)."""
    import torch

    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    # the first index whose cumulative mass exceeds u: never a token of probability 0
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[1] - 1).squeeze(1)


def head_sample(model, hidden, temperature: float, top_p: float = 1.0):
    """A token drawn for each final hidden state (rows, d) at `temperature` from the top_p nucleus:
    `draw` from `head_probs`."""
    return draw(head_probs(model, hidden, temperature, top_p))


def greedy_rows(
    model, prompts: list[list[int]], max_new_tokens: int, eos: set[int], pad_id: int
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, decoded together; each row's new tokens, ending
    at its eos if any.

    What prompts share at their start (instructions, few-shot examples, a dialogue's earlier
    turns) is encoded once (`prefill_plan`): each prompt continues the KV cache of the first
    tokens of the one encoded before it, on its own (no padding), every layer keeping every
    position, and prompts that each start with the one before (a dialogue's rounds) are encoded
    in one forward (`_chains`). A prompt's first token comes from the hidden state at its own
    last position. The
    rows then decode together, left-padded, and a row leaves the batch (and the cache) at its
    eos. The positions, mask and cache are those transformers' greedy `generate` builds for each
    prompt, so the tokens are the same up to float rounding of batched products (fp32:
    `tests/test_generate.py`, and the replies counted in `benchmarks/eval_generation.py`).
    """
    return _rows(model, prompts, max_new_tokens, eos, functools.partial(head_argmax, model))


def sampled_rows(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    temperature: float,
    top_p: float = 1.0,
) -> list[list[int]]:
    """As `greedy_rows`, each token drawn at `temperature` from the top_p nucleus (`head_sample`);
    seed torch before the call for reproducible draws."""
    pick = functools.partial(head_sample, model, temperature=temperature, top_p=top_p)
    return _rows(model, prompts, max_new_tokens, eos, pick)


def _chains(prompts, plan):
    """The plan cut into chains of prompts that each start with the one before (a dialogue's
    rounds): a chain is encoded in one forward of its last prompt, each member's first token
    coming from the hidden state at its own last position."""
    chains = []
    for r, shared in plan:
        if chains and prompts[r][: len(prompts[chains[-1][-1][0]])] == prompts[chains[-1][-1][0]]:
            chains[-1].append((r, shared))
        else:
            chains.append([(r, shared)])
    return chains


def _rows(model, prompts, max_new_tokens: int, eos: set[int], pick) -> list[list[int]]:
    """Prefill (shared prefixes once), then decode with `pick` (hidden states -> tokens); the rows
    decode longest prompt first, so that rows of like length are neighbours (`_row_attention`)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    rows = _sorted_rows(model, [prompts[i] for i in order], max_new_tokens, eos, pick)
    out = [None] * len(prompts)
    for i, r in zip(order, rows):
        out[i] = r
    return out


def _sorted_rows(model, prompts, max_new_tokens: int, eos: set[int], pick) -> list[list[int]]:
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    # keys, values of layer 0, of layer 1, ...: every prompt's (kv); the last chain's (before)
    kv = before = last = None
    for chain in _chains(prompts, prefill_plan(prompts)):
        start, end = chain[0][1], chain[-1][0]  # one forward: the chain's longest prompt
        cache = DynamicCache()  # no sliding window: the next prompt may share more than a window
        for i in range(0, len(before) if start else 0, 2):
            cache.update(before[i][:, :, :start], before[i + 1][:, :, :start], i // 2)
        hidden = model.base_model(
            input_ids=torch.tensor([prompts[end][start:]], device=device),
            **{_cache_arg(model): cache},
            use_cache=True,
        ).last_hidden_state[0]
        if last is None:
            last = hidden.new_empty(len(prompts), hidden.shape[-1])
        before = [x for layer in cache.layers for x in (layer.keys, layer.values)]
        if kv is None:  # left-padded with zeros to the longest, then room for the new tokens
            kv = [
                x.new_empty(len(prompts), x.shape[1], longest + max_new_tokens, x.shape[3])
                for x in before
            ]
            for buf in kv:
                for row, n in enumerate(lengths):
                    buf[row, :, : longest - n] = 0
        for r, _ in chain:
            last[r] = hidden[lengths[r] - 1 - start]
            for buf, x in zip(kv, before):
                buf[r, :, longest - lengths[r] : longest] = x[0, :, : lengths[r]]
    first = pick(last)
    cols = torch.arange(longest, device=device)
    attention_mask = (cols[None] >= longest - torch.tensor(lengths, device=device)[:, None]).long()
    cache = DynamicCache(config=model.config)  # sliding-window layers keep their last window
    cache.layers = [_with_room(layer, max_new_tokens) for layer in cache.layers]
    for i, layer in enumerate(cache.layers):
        layer.adopt(kv[2 * i], kv[2 * i + 1], longest)
    return _decode(model, cache, attention_mask, first, max_new_tokens, eos, pick)


def _with_room(layer, room: int):
    """A cache layer like `layer` (transformers' full or sliding-window DynamicLayer) whose keys and
    values are views of buffers with room for the new tokens: a decode step writes its token in
    place, where DynamicLayer concatenates the whole cache (a fifth of a 32-row CPU step at 700
    tokens of history). `adopt` hands it buffers that already hold the prompts."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    full, sliding = _room_classes()
    if type(layer) is DynamicSlidingWindowLayer:
        return sliding(room, sliding_window=layer.sliding_window)
    if type(layer) is DynamicLayer:
        return full(room)
    raise TypeError(f"no preallocated version of the cache layer {type(layer).__name__}")


@functools.cache
def _room_classes():
    """The two cache layer classes of `_with_room`, subclasses of transformers' (imported lazily)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    class Room:
        """keys and values: positions [start, end) of buffers along the sequence axis."""

        def __init__(self, room: int, **kwargs):
            super().__init__(**kwargs)
            self.room, self.buffers, self.start, self.end = room, None, 0, 0

        def adopt(self, keys, values, end: int):
            """Take buffers whose first `end` positions hold the prompts' keys and values."""
            self.lazy_initialization(keys, values)
            self.buffers, self.end = [keys, values], end
            self.seen(end)

        def seen(self, n: int) -> None:
            """n positions were added: set the views (a sliding window also moves its start)."""
            self.keys, self.values = (b[:, :, self.start : self.end] for b in self.buffers)

        def append(self, keys, values):
            """Write new positions after the current ones (into bigger buffers when out of room)."""
            n = keys.shape[-2]
            if self.buffers is None or self.end + n > self.buffers[0].shape[-2]:
                kept = self.end - self.start
                grown = [
                    x.new_empty(*x.shape[:2], kept + n + self.room, x.shape[3])
                    for x in (keys, values)
                ]
                for new, old in zip(grown, self.buffers or ()):
                    new[:, :, :kept] = old[:, :, self.start : self.end]
                if self.buffers is None:
                    self.lazy_initialization(keys, values)
                self.buffers, self.start, self.end = grown, 0, kept
            for buf, x in zip(self.buffers, (keys, values)):
                buf[:, :, self.end : self.end + n] = x
            self.end += n
            self.keys, self.values = (b[:, :, self.start : self.end] for b in self.buffers)

        def batch_select_indices(self, indices):
            if self.buffers is not None:
                self.buffers = [b[indices] for b in self.buffers]
                self.keys, self.values = (b[:, :, self.start : self.end] for b in self.buffers)

    class Full(Room, DynamicLayer):
        def update(self, keys, values, *args, **kwargs):
            self.append(keys, values)
            return self.keys, self.values

    class Sliding(Room, DynamicSlidingWindowLayer):
        def update(self, keys, values, *args, **kwargs):
            self.append(keys, values)
            window = self.keys, self.values  # this step attends to the window and itself
            self.seen(keys.shape[-2])
            return window

        def seen(self, n: int) -> None:
            self.cumulative_length += n  # keeps the last sliding_window - 1 positions
            self.start = max(self.start, self.end - self.sliding_window + 1)
            super().seen(n)

    return Full, Sliding


def _cache_arg(model) -> str:
    """The name under which the model's backbone takes its KV cache (`cache` from transformers 5.40)."""
    import inspect

    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


FEW_ROWS = 64  # up to this many rows, a CPU computes a linear layer faster as weight @ x.T


def _few_row_linear(layer, x):
    """layer(x) for an nn.Linear, as weight @ x.T when x has at most FEW_ROWS rows: at 32 rows a
    CPU computes Gemma 3's 640 -> 2048 projection 2.4x as fast as `F.linear` does."""
    import torch

    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > FEW_ROWS:
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    y = (layer.weight @ flat.T).T.contiguous()
    if layer.bias is not None:
        y += layer.bias
    return y.view(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def _few_row_linears(model):
    """While it lasts, the model's fp32 nn.Linear layers on a CPU compute as `_few_row_linear` (a
    decode step has one row per prompt); a GPU keeps its own kernels, and so do bf16 layers (on a
    CPU with native bf16, weight @ x.T ran at 0.4-1.0x the speed of F.linear for 1-64 rows)."""
    import torch

    layers = [m for m in model.modules() if type(m) is torch.nn.Linear]
    if (
        not layers
        or layers[0].weight.device.type != "cpu"
        or layers[0].weight.dtype != torch.float32
    ):
        yield
        return
    for layer in layers:
        layer.forward = functools.partial(_few_row_linear, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)  # the class' forward again


ROW_ATTENTION = "mi_llm_rows"  # the attention a CPU decode step runs (registered with transformers)
ATTENTION_CALL = 512  # what one more attention call costs a CPU decode step, in rows x positions


def attention_groups(first: list[int], positions: int, call: int):
    """A decode step's rows cut into runs of consecutive rows, [(start, end, since), ...], where
    `since` is the first of the `positions` cache positions that any row of the run attends to:
    the cut that attends to the fewest positions, counting rows x (positions - since) for each run
    plus `call` for each run (dynamic programming over the rows)."""
    cost, cut = [0] + [math.inf] * len(first), [0] * (len(first) + 1)
    for end in range(1, len(first) + 1):
        since = positions
        for start in range(end - 1, -1, -1):
            since = min(since, first[start])
            c = cost[start] + (end - start) * (positions - since) + call
            if c < cost[end]:
                cost[end], cut[end] = c, start
    runs, end = [], len(first)
    while end:
        runs.append((cut[end], end, min(first[cut[end] : end])))
        end = cut[end]
    return runs[::-1]


_RUNS = [None, None]  # the last decode mask seen and its runs (a step's layers share two masks)


def _row_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, where a decode step's rows are left-padded to the longest: each
    run of rows (`attention_groups`) attends from the first position one of its rows attends to,
    skipping padding the mask would zero. The same attention over fewer positions (short rows of a
    32-row batch attend to a third of the cache when the longest has 700 tokens)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask
    if mask is None or query.shape[2] != 1 or mask.ndim != 4 or mask.shape[0] != query.shape[0]:
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    if _RUNS[0] is not mask:
        attended = mask[:, 0, -1] if mask.dtype == torch.bool else mask[:, 0, -1] == 0
        first = attended.int().argmax(-1).tolist()  # each row's first attended position
        _RUNS[:] = [mask, attention_groups(first, mask.shape[-1], ATTENTION_CALL)]
    out = [
        sdpa_attention_forward(
            module, query[a:b], key[a:b, :, s:], value[a:b, :, s:], mask[a:b, ..., s:], **kwargs
        )[0]
        for a, b, s in _RUNS[1]
    ]
    return (out[0] if len(out) == 1 else torch.cat(out)), None


@functools.cache
def _register_row_attention() -> None:
    """`_row_attention` under the name ROW_ATTENTION, with sdpa's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, _row_attention)
    AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def _row_attentions(model):
    """While it lasts, a model that attends with sdpa on a CPU attends with `_row_attention`."""
    config = model.config
    if config._attn_implementation != "sdpa" or next(model.parameters()).device.type != "cpu":
        yield
        return
    _register_row_attention()
    config._attn_implementation = ROW_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
        _RUNS[:] = [None, None]


def _decode(model, cache, attention_mask, nxt, max_new_tokens: int, eos: set[int], pick):
    """The steps after the prefill: nxt holds each row's first new token; pick(hidden) the next."""
    with _few_row_linears(model), _row_attentions(model):
        return _decode_steps(model, cache, attention_mask, nxt, max_new_tokens, eos, pick)


def _decode_steps(model, cache, attention_mask, nxt, max_new_tokens: int, eos: set[int], pick):
    import torch

    rows = [[t] for t in nxt.tolist()]
    alive = torch.arange(len(rows))
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=nxt.device)
    length = attention_mask.shape[1]
    for _ in range(max_new_tokens - 1):
        going = ~torch.isin(nxt, eos_t)
        if not going.any():
            break
        if not going.all():  # finished rows leave the batch
            keep = going.nonzero().flatten()
            cache.batch_select_indices(keep)
            alive, nxt, attention_mask = alive[keep], nxt[keep], attention_mask[keep]
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1
        )
        hidden = model.base_model(
            input_ids=nxt[:, None],
            attention_mask=attention_mask,
            position_ids=attention_mask.sum(-1, keepdim=True) - 1,
            **{_cache_arg(model): cache},
            use_cache=True,
            cache_position=torch.arange(length, length + 1, device=nxt.device),
        ).last_hidden_state
        nxt, length = pick(hidden[:, -1]), length + 1
        for r, t in zip(alive.tolist(), nxt.tolist()):
            rows[r].append(t)
    return rows


def generate(model, tokenizer, prompts: list[list[dict]], **kw) -> list[str]:
    """Replies to chat prompts, in prompt order (see generate_batches for the keywords)."""
    replies = [""] * len(prompts)
    for idx, batch in generate_batches(model, tokenizer, prompts, **kw):
        for i, r in zip(idx, batch):
            replies[i] = r
    return replies


# ----------------------------------------------------------------------------- records on disk
def read_generations(path: str | Path) -> list[dict]:
    """Records of generations.jsonl ([] when absent); a torn last line (a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # written without its newline: the batch never finished
                break
            raise DataError(path, i, "line", f"not JSON: {e}") from e
    return out


def _append(path: Path, records: list[dict]) -> None:
    """Append records and fsync, after cutting a torn last line left by a crash."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:  # the last byte only: appending costs O(batch), not O(file)
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # after a crash only: cut back to the last complete line
            data = path.read_bytes()
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _key(r: dict) -> tuple:
    return tuple(str(r[k]) for k in KEY)


# ----------------------------------------------------------------------------- the stage
def resolve_device(device: str) -> str:
    """params device 'auto' -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def adapter_dir(P, model: str) -> Path:
    """Where stage 03 saved the LoRA adapter of a model: runs/<name>/03_sft/<model>/adapter/."""
    return P.run_dir / stages.ADAPTER.format(model=model)


def _check_adapter(name: str, adapter: Path) -> None:
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{adapter}: no PEFT adapter for model {name!r}; run stage 03 first"
        )


def _with_adapter(model, tokenizer, name: str, adapter: Path):
    """Base model + the PEFT adapter, merged for speed; the adapter's tokenizer when it saved one."""
    from peft import PeftModel

    from . import models

    _check_adapter(name, adapter)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()  # plain model again
    if (adapter / "tokenizer_config.json").exists():
        tokenizer = models.load_tokenizer(name, adapter)
    return merged.eval(), tokenizer


def fingerprint(P, name: str, variant: str, weights, adapter: Path | None) -> str:
    """Short hash of what determines a variant's replies (a re-run must match it to resume).

    The conditioned variant's per-round behaviours are checked record by record on resume.
    """
    import hashlib

    from .runs import sha256_file

    E = P.evaluation
    facts = {
        "model": name,
        "weights": str(weights or ""),
        "variant": variant,
        "seed": P.seed,
        "max_new_tokens": E.max_new_tokens,
        "generation": E.generation,
        "context_turns": E.context_turns,
        "adapter": sha256_file(adapter / "adapter_model.safetensors")
        if variant in ADAPTED and adapter and (adapter / "adapter_model.safetensors").exists()
        else None,
    }
    if variant == "conditioned":
        facts["condition_on"] = E.condition_on
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _check_fingerprints(
    out_path: Path, existing: list[dict], name: str, variant: str, fp: str
) -> None:
    stale = {
        r.get("settings") for r in existing if r["model"] == name and r["variant"] == variant
    } - {fp}
    if stale:
        raise ValueError(
            f"{out_path}: replies of {name}/{variant} were made with other settings "
            f"({sorted(map(str, stale))} != {fp}: weights, adapter or generation params "
            "changed); delete the file or use a new run name"
        )


def behaviours(condition_on: str, histories: list[list[dict]], forecaster_path=None) -> list[str]:
    """The MI behaviour of each conditioned round: a fixed TAGS label, or the forecaster's on its history."""
    if condition_on in TAGS:
        return [condition_on] * len(histories)
    if condition_on != "forecaster":
        raise ValueError(
            f"evaluation.condition_on: {condition_on!r} is not 'forecaster' or one of {list(TAGS)}"
        )
    if forecaster_path is None or not Path(forecaster_path).exists():
        raise FileNotFoundError(
            f"{forecaster_path}: no forecaster; run forecast.evaluate (04, evaluation.forecaster"
            f".enabled) before generation, or set evaluation.condition_on to one of {list(TAGS)}"
        )
    bundle = forecast.load(forecaster_path)
    return [forecast.predict_next(bundle, h) for h in histories]


def _check_behaviours(out_path: Path, existing: list[dict], name: str, todo: list[dict]) -> None:
    want = {_key({"model": name, "variant": "conditioned", **r}): r["behaviour"] for r in todo}
    stale = sorted(k for r in existing if (k := _key(r)) in want and r.get("behaviour") != want[k])
    if stale:
        raise ValueError(
            f"{out_path}: {len(stale)} conditioned replies of {name} (first {stale[0]}) were made for "
            "other behaviours (forecaster or condition_on changed); delete the file or use a new run name"
        )


def _record(name: str, variant: str, r: dict, reply: str, fp: str) -> dict:
    """One generations.jsonl record; the reply without a tag, its label under "behaviour"."""
    written, text = split_tag(reply)
    return {
        "model": name,
        "variant": variant,
        "dialogue_id": r["dialogue_id"],
        "round": r["round"],
        "topic": r["topic"],
        "messages": r["messages"],
        "reference": r["reference"],
        "reply": text,
        "behaviour": r["behaviour"] if variant == "conditioned" else written,
        "settings": fp,
    }


def _generate_variant(P, model, tok, name, variant, pending, out_path, progress, fp):
    from tqdm.auto import tqdm

    from . import models
    from .runs import set_seed

    E = P.evaluation
    set_seed(P.seed)  # same seed for every variant: sampled runs differ by the model alone
    bar = tqdm(
        total=len(pending), desc=f"generate {name}/{variant}", unit="reply", disable=not progress
    )
    batches = generate_batches(
        model,
        tok,
        [r["messages"] for r in pending],
        batch_size=E.batch_size,
        max_new_tokens=E.max_new_tokens,
        overrides=E.generation,
        stop_tokens=models.get(name).special_tokens,
        prefixes=[tag_prefix(r["behaviour"]) for r in pending]
        if variant == "conditioned"
        else None,
    )
    for idx, replies in batches:
        _append(
            out_path,
            [_record(name, variant, pending[i], reply, fp) for i, reply in zip(idx, replies)],
        )
        bar.update(len(idx))
    bar.close()


def _run_model(P, name, variants, todo, existing, out_path, weights, ad, progress) -> None:
    """Generate the missing rounds of one model: base first, then base + adapter (finetuned, conditioned)."""
    from . import models

    done = {_key(r) for r in existing}
    pending = {
        v: [r for r in todo if _key({"model": name, "variant": v, **r}) not in done]
        for v in variants
    }
    if any(v in ADAPTED for v in variants):
        _check_adapter(name, ad)  # fail before spending minutes on the base variant
    fps = {v: fingerprint(P, name, v, weights, ad) for v in variants}
    for v in variants:
        _check_fingerprints(out_path, existing, name, v, fps[v])
    if "conditioned" in variants:
        _check_behaviours(out_path, existing, name, todo)
    if not any(pending.values()):
        return
    model, tok = models.load(name, resolve_device(P.device), path=weights)
    model.eval()
    merged = False
    for v in variants:
        if v in ADAPTED and not merged:
            model, tok = _with_adapter(model, tok, name, ad)
            merged = True
        if pending[v]:
            _generate_variant(P, model, tok, name, v, pending[v], out_path, progress, fps[v])


def run(
    P,
    test_path=None,
    out_path=None,
    model_paths: dict | None = None,
    adapter_dirs: dict | None = None,
    progress: bool = True,
    forecaster_path=None,
) -> list[dict]:
    """Generate every missing (model, variant, dialogue, round) into generations.jsonl; return them.

    model_paths / adapter_dirs override, per model name, the weights (default: P.model_paths, else
    the registry) and the 03 adapter (tests use a tiny model); forecaster_path the bundle the
    conditioned variant asks (default: 04's forecaster.joblib). The returned records are those of
    this configuration, in key order.
    """
    from .params import path

    model_paths = {k: path(v) for k, v in {**P.model_paths, **(model_paths or {})}.items()}

    E = P.evaluation
    unknown = sorted(set(E.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"evaluation.variants: unknown {unknown}; known: {list(VARIANTS)}")
    test_path = Path(test_path or P.run_dir / stages.TEST)
    out_path = Path(out_path or P.run_dir / stages.GENERATIONS)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not test_path.exists():
        raise FileNotFoundError(f"{test_path}: no MI test set; run stage 02 first")
    records = read_split(test_path)
    todo = rounds(records, E.max_dialogues, E.max_rounds, E.context_turns)
    if "conditioned" in E.variants:  # the forecaster reads the whole gold history, not the window
        if not any(
            split_tag(m["content"])[0]
            for r in records
            for m in r["messages"]
            if m["role"] == "assistant"
        ):
            warnings.warn(
                f"{test_path}: no counselor turn is tagged (transcription.tag_behaviour off), so the "
                "conditioned variant's <mi:...> prefix is a prompt the model was not fine-tuned on"
            )
        full = rounds(records, E.max_dialogues, E.max_rounds, None)
        fc = forecaster_path or P.run_dir / stages.FORECASTER_MODEL
        for r, label in zip(todo, behaviours(E.condition_on, [f["messages"] for f in full], fc)):
            r["behaviour"] = label
    existing = read_generations(out_path)
    variants = sorted(E.variants, key=VARIANTS.index)  # the adapter is merged in once, after base
    for name in E.models:
        ad = Path((adapter_dirs or {}).get(name) or adapter_dir(P, name))
        _run_model(P, name, variants, todo, existing, out_path, model_paths.get(name), ad, progress)
    wanted = {
        _key({"model": m, "variant": v, **r}) for m in E.models for v in variants for r in todo
    }
    recs = {_key(r): r for r in read_generations(out_path) if _key(r) in wanted}
    return sorted(
        recs.values(), key=lambda r: (r["model"], r["variant"], r["dialogue_id"], r["round"])
    )


def examples(generations: list[dict], n: int = 3, width: int = 120):
    """The first n rounds side by side: last client turn, reference and each variant's reply."""
    import pandas as pd

    df = pd.DataFrame(generations)
    if df.empty:
        return df
    df["client"] = df["messages"].map(lambda m: m[-1]["content"] if m else "")
    wide = df.pivot_table(
        index=["model", "dialogue_id", "round", "client", "reference"],
        columns="variant",
        values="reply",
        aggfunc="first",
    ).reset_index()
    wide.columns.name = None
    return wide.head(n).map(
        lambda v: v[:width] + "…" if isinstance(v, str) and len(v) > width else v
    )
