"""The CPU decoding loop: prompts that share their start are encoded once, rows decode
longest first past their left padding, and the KV cache has room for the new tokens."""

from __future__ import annotations

import functools

from mi_llm.decode import kernels

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
    return _rows(model, prompts, max_new_tokens, eos, functools.partial(kernels.head_argmax, model))


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
    pick = functools.partial(kernels.head_sample, model, temperature=temperature, top_p=top_p)
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


def _decode(model, cache, attention_mask, nxt, max_new_tokens: int, eos: set[int], pick):
    """The steps after the prefill: nxt holds each row's first new token; pick(hidden) the next."""
    with kernels._few_row_linears(model), kernels._row_attentions(model):
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
