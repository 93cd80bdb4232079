"""The CPU decode step's kernels: the output layer's argmax and probabilities in chunks,
few-row Linear layers, and attention by runs of rows."""

from __future__ import annotations

import contextlib
import functools
import math

# ----------------------------------------------------------------------------- greedy decoding
# output-layer rows scored at a time when picking the greedy token: fp32 scores a chunk as
# weight @ hidden.T, bf16 and fp16 as hidden @ weight.T (see head_argmax)
VOCAB_CHUNK = {"float32": 2048, "reduced": 16384}


def head_argmax(model, hidden):
    """Greedy next token of each final hidden state (rows, d): the output layer with its scale and
    soft-cap, scored a vocabulary chunk at a time.

    The same argmax as the model's logits (the first index of the maximum). Each chunk contributes
    only its maximum per row (an index per row costs a chunk seven times more); the index is then
    looked up in the one chunk where each row's maximum first occurs. A CPU reduces a chunk fastest
    along contiguous memory in bf16 and fp16 (vocabulary-major bf16 chunks reduce far slower), and
    multiplies fp32 fastest as weight @ hidden.T (faster than `hidden @ weight.T` at a few
    rows): fp32 chunks are (chunk, rows) blocks, reduced-precision ones (rows, chunk) blocks.
    """
    import torch

    from mi_llm.models.registry import logit_transform

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

    from mi_llm.models.registry import logit_transform

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
    draws from, at one random number per row where it takes one per vocabulary entry (millions per
    step for a batch over Gemma's 262k vocabulary)."""
    import torch

    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    # the first index whose cumulative mass exceeds u: never a token of probability 0
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[1] - 1).squeeze(1)


def head_sample(model, hidden, temperature: float, top_p: float = 1.0):
    """A token drawn for each final hidden state (rows, d) at `temperature` from the top_p nucleus:
    `draw` from `head_probs`."""
    return draw(head_probs(model, hidden, temperature, top_p))


FEW_ROWS = 64  # up to this many rows, a CPU computes a linear layer faster as weight @ x.T


def _few_row_linear(layer, x):
    """layer(x) for an nn.Linear, as weight @ x.T when x has at most FEW_ROWS rows, where a CPU
    computes it faster than `F.linear` does (benchmarks/README.md)."""
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
    CPU with native bf16, weight @ x.T was no faster than F.linear for 1-64 rows)."""
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
