"""Replies/s of stage 04's generation: batched (left-padded, sorted by length) vs one prompt at a time.

Same prompts (round-based prompts built from the shipped CPsyCounE sample), same model (the embedded
Gemma 3 270M in the registry's dtype as models.load gives it: fp32 on a CPU without native bf16,
unless --dtype), same greedy settings. Both sides are warmed up at their own batch size first, then
measured interleaved (batched, one at a time, batched, ...) for --reps rounds so that a busy machine
slows both alike; prints both rates, their ratio, how many replies are identical, and peak RSS.

    .venv/bin/python benchmarks/eval_generation.py [--n 16] [--batch-size 16] [--max-new-tokens 64] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mi_llm import corpora, generate, models
from mi_llm.params import ROOT


def prompts(n: int, context_turns: int) -> list[list[dict]]:
    """n round-based prompts from the CPsyCounE sample (a few rounds from each dialogue)."""
    dialogues = corpora.load("cpsycoune", ROOT / "data/CPsyCounE")
    records = [
        {"id": d.id, "topic": d.meta.get("topic"), "messages": d.to_messages()} for d in dialogues
    ]
    rounds = generate.rounds(records, max_rounds=2, context_turns=context_turns)
    if len(rounds) < n:
        raise SystemExit(f"only {len(rounds)} prompts in the sample, asked for {n}")
    return [r["messages"] for r in rounds[:n]]


def timed(fn):
    """(result, wall seconds) of fn()."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    """Run both modes on the same prompts and print replies/s, new tokens/s and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n", type=int, default=16, help="prompts")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--context-turns", type=int, default=6, help="messages of history per prompt")
    ap.add_argument("--dtype", default=None, help="torch dtype (default: the registry's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds of both sides")
    args = ap.parse_args()

    model, tok = models.load(args.model, args.device, dtype=args.dtype)
    ps = prompts(args.n, args.context_turns)
    lens = [len(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)) for p in ps]
    print(
        f"model {args.model} ({model.dtype}, {args.device}), {len(ps)} prompts, "
        f"prompt chars {min(lens)}-{max(lens)}, max_new_tokens {args.max_new_tokens}",
        flush=True,
    )
    kw = {"max_new_tokens": args.max_new_tokens}
    # warm-up of each side at its own batch size (allocations, kernels, caches), not timed
    generate.generate(
        model, tok, ps[: args.batch_size], batch_size=args.batch_size, max_new_tokens=4
    )
    generate.generate(model, tok, ps[:1], batch_size=1, max_new_tokens=4)

    t_b = t_s = 0.0
    for _ in range(args.reps):  # interleaved: a load change on the machine hits both sides
        batched, t = timed(
            lambda: generate.generate(model, tok, ps, batch_size=args.batch_size, **kw)
        )
        t_b += t
        single, t = timed(
            lambda: [generate.generate(model, tok, [p], batch_size=1, **kw)[0] for p in ps]
        )
        t_s += t
    n = len(ps) * args.reps

    def ntok(replies):  # new tokens, re-tokenized from the decoded replies (eos not counted)
        return sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies) * args.reps

    for name, replies, t in [("batched", batched, t_b), ("one at a time", single, t_s)]:
        print(
            f"{name:>14}: {n / t:6.2f} replies/s  {ntok(replies) / t:7.1f} new tok/s  "
            f"({t:.1f} s for {n} replies)",
            flush=True,
        )
    same = sum(a == b for a, b in zip(batched, single))
    print(
        f"speed-up batched / one at a time: {t_s / t_b:.1f}x (interleaved, {args.reps} reps); "
        f"identical replies: {same}/{len(ps)} (greedy; bf16 padding may change a few, fp32 none)"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
