"""Replies/s of stage 04's generation: the project's cpu engine batched (shared starts encoded
once) against transformers' `model.generate` batched at the same batch size (left padding, the
hf engine: what a user would otherwise run) and against the engine one prompt at a time.

Same prompts, same model (the embedded Gemma 3 270M in the registry's dtype as registry.load gives it:
fp32 on a CPU without native bf16, unless --dtype), same greedy settings. The prompts are stage 04's
round-based prompts of the shipped CPsyCounE sample, by default in the shape `--params` gives them
(params/paper.yaml: every round of a dialogue, each with the whole gold history, batches of 32;
`--params params/smoke.yaml` gives the smoke study's). Both sides are warmed up at their own batch
size first, then measured interleaved (batched, generate batched, one at a time, batched, ...) for
--reps rounds so that a busy machine slows all alike. Prints the rates, the line
`vs model.generate batched: ... <ratio>x` with how many replies are identical, the ratio to one
prompt at a time, the prompt tokens each side encodes, what one greedy step costs per row alone and in a
batch (the most batching can give the decode), and peak RSS.

    .venv/bin/python benchmarks/eval_generation.py [--params params/paper.yaml] [--n BATCH]
        [--batch-size B] [--max-new-tokens 64] [--context-turns N|all] [--max-rounds N|all] [--reps 1]
        [--engine cpu] [--no-single]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mi_llm import params
from mi_llm.data import corpora
from mi_llm.decode import cpu, engine
from mi_llm.eval import generation
from mi_llm.models import registry
from mi_llm.params import ROOT


def prompts(n: int, context_turns: int | None, max_rounds: int | None = None) -> list[list[dict]]:
    """The first n round-based prompts of the CPsyCounE sample, dialogue by dialogue."""
    dialogues = corpora.load("cpsycoune", ROOT / "data/CPsyCounE")
    records = [
        {"id": d.id, "topic": d.meta.get("topic"), "messages": d.to_messages()} for d in dialogues
    ]
    rounds = generation.rounds(records, max_rounds=max_rounds, context_turns=context_turns)
    if len(rounds) < n:
        raise SystemExit(f"only {len(rounds)} prompts in the sample, asked for {n}")
    return [r["messages"] for r in rounds[:n]]


def count(text: str) -> int | str | None:
    """An int, None for 'all', or 'params' (take it from --params)."""
    if text == "params":
        return text
    return None if text in ("all", "none", "None") else int(text)


def timed(fn):
    """(result, wall seconds) of fn()."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def decode_step(model, rows: list[list[int]], pad_id: int, steps: int = 8) -> float:
    """Seconds of one greedy decode step of these token-id prompts together (no row stops early)."""
    import torch

    with torch.inference_mode():
        _, prefill = timed(lambda: cpu.greedy_rows(model, rows, 1, set(), pad_id))
        _, total = timed(lambda: cpu.greedy_rows(model, rows, steps + 1, set(), pad_id))
    return (total - prefill) / steps


def main() -> None:
    """Run both modes on the same prompts and print replies/s, new tokens/s and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--params", default="params/paper.yaml", help="its evaluation section's shape")
    ap.add_argument("--n", type=int, default=None, help="prompts (default: one batch)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--context-turns", type=count, default="params", help="N or all")
    ap.add_argument("--max-rounds", type=count, default="params", help="N or all")
    ap.add_argument("--dtype", default=None, help="torch dtype (default: the registry's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=1, help="interleaved rounds of all sides")
    ap.add_argument("--engine", default="cpu", choices=["cpu", "hf"], help="the engine measured")
    ap.add_argument("--no-single", action="store_true", help="skip one prompt at a time")
    args = ap.parse_args()
    E = params.load(
        ROOT / args.params if not os.path.isabs(args.params) else args.params
    ).evaluation
    args.batch_size = args.batch_size or E.batch_size
    args.n = args.n or args.batch_size
    for k in ("context_turns", "max_rounds"):
        if getattr(args, k) == "params":
            setattr(args, k, getattr(E, k))

    model, tok = registry.load(args.model, args.device, dtype=args.dtype)
    ps = prompts(args.n, args.context_turns, args.max_rounds)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in engine.prompt_texts(tok, ps)]
    batches = cpu.batches_by_prefix(ids, args.batch_size)
    encoded = sum(
        len(ids[b[i]]) - shared
        for b in batches
        for i, shared in cpu.prefill_plan([ids[j] for j in b])
    )
    lens = [len(i) for i in ids]
    print(
        f"model {args.model} ({model.dtype}, {args.device}), {len(ps)} prompts of "
        f"{min(lens)}-{max(lens)} tokens (context_turns {args.context_turns}, max_rounds "
        f"{args.max_rounds}), max_new_tokens {args.max_new_tokens}\n"
        f"prompt tokens encoded: one at a time {sum(lens)}, batched {encoded} "
        f"(shared starts encoded once, batches of {args.batch_size})",
        flush=True,
    )
    kw = {"max_new_tokens": args.max_new_tokens, "engine": args.engine}
    hf = {"max_new_tokens": args.max_new_tokens, "engine": "hf", "batch_size": args.batch_size}
    # warm-up of each side at its own batch size (allocations, kernels, caches), not timed
    engine.generate(model, tok, ps[: args.batch_size], batch_size=args.batch_size, **kw)
    engine.generate(model, tok, ps[: args.batch_size], **{**hf, "max_new_tokens": 4})
    if not args.no_single:
        engine.generate(model, tok, ps[:1], batch_size=1, **{**kw, "max_new_tokens": 4})

    t_b = t_g = t_s = 0.0
    single = None
    for _ in range(args.reps):  # interleaved: a load change on the machine hits every side
        batched, t = timed(
            lambda: engine.generate(model, tok, ps, batch_size=args.batch_size, **kw)
        )
        t_b += t
        generated, t = timed(lambda: engine.generate(model, tok, ps, **hf))
        t_g += t
        if not args.no_single:
            single, t = timed(
                lambda: [engine.generate(model, tok, [p], batch_size=1, **kw)[0] for p in ps]
            )
            t_s += t
    n = len(ps) * args.reps

    def ntok(replies):  # new tokens, re-tokenized from the decoded replies (eos not counted)
        return sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies) * args.reps

    sides = [
        (f"{args.engine} batched", batched, t_b),
        ("generate batched", generated, t_g),
        *([("one at a time", single, t_s)] if single is not None else []),
    ]
    for name, replies, t in sides:
        print(
            f"{name:>16}: {n / t:6.2f} replies/s  {ntok(replies) / t:7.1f} new tok/s  "
            f"({t:.1f} s for {n} replies)",
            flush=True,
        )
    same = sum(a == b for a, b in zip(batched, generated))
    print(
        f"vs model.generate batched: {t_g:.1f} s against {t_b:.1f} s ({args.engine} engine), "
        f"batches of {args.batch_size}, {model.dtype}, identical replies {same}/{len(ps)} "
        f"(greedy; reduced precision may flip a near-tie): {t_g / t_b:.1f}x"
    )
    if single is not None:
        same = sum(a == b for a, b in zip(batched, single))
        print(
            f"vs one prompt at a time: {t_s / t_b:.1f}x (interleaved, {args.reps} reps); "
            f"identical replies: {same}/{len(ps)}"
        )
    # the decode's own ceiling: what one greedy step costs per row, the batch against one prompt
    batch = ids[: args.batch_size]
    one = sorted(batch, key=len)[len(batch) // 2]  # the batch's median prompt
    per_row = [decode_step(model, rows, tok.pad_token_id) / len(rows) for rows in ([one], batch)]
    print(
        f"one greedy step per row: {per_row[0] * 1e3:.0f} ms alone, {per_row[1] * 1e3:.0f} ms in "
        f"a batch of {len(batch)}: batching speeds the decode up by at most "
        f"{per_row[0] / per_row[1]:.1f}x here"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
