"""Requests/s of api.complete: client plumbing, and the embedded model's real answers.

1. Plumbing: concurrency 1 and 16 against the local test server (200 ms latency per request, no
   compute): with a fixed latency, throughput should scale with the requests in flight (>= 8x).
2. The embedded model (Gemma 3 270M, provider embedded: in this process, batched) on stage 01's
   judge requests of the smoke recipe (5 corpora x 2 dialogues), at concurrency 1 and at the smoke
   setting (llm.max_concurrency), each side warmed up first (model loaded, one batch at its size).
   This is compute-bound on a CPU. --serve adds the same requests through `transformers serve`
   (provider serve, the OpenAI-client path), its start-up timed apart.

    .venv/bin/python benchmarks/transcription_concurrency.py [--no-embedded] [--serve]

Prints tables, the ratios and the peak RSS; exits 1 when the plumbing ratio is below 8x.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import serve

from mi_llm.llm import api
from mi_llm.params import LLMParams

LATENCY_S = 0.2  # server-side delay per request
N = {1: 20, 16: 160}  # requests per run: ~4 s at concurrency 1, 10 waves at 16


def rate(concurrency: int, n: int, url, tmp: Path) -> tuple[float, float]:
    """Requests/s and wall seconds for n fresh (uncached) requests at the given concurrency."""
    p = LLMParams(provider="remote", max_concurrency=concurrency, request_timeout=30, max_retries=0)
    ep = api.Endpoint(url, "bench", "bench-key", "remote")
    reqs = [
        api.Request(f"c{concurrency}-{i}", [{"role": "user", "content": f"第{i}段对话"}])
        for i in range(n)
    ]
    t0 = time.perf_counter()
    res = api.complete(
        ep,
        reqs,
        llm_params=p,
        cache_path=tmp / f"c{concurrency}.sqlite",
        settings={"max_tokens": 64},
        desc=f"concurrency {concurrency}",
    )
    wall = time.perf_counter() - t0
    bad = [r for r in res if not r.ok or r.cached]
    if bad:  # max_retries=0: a refused connection is not hidden by a retry
        raise RuntimeError(
            f"{len(bad)} of {n} requests failed at concurrency {concurrency}: {bad[0].error}"
        )
    return n / wall, wall


def judge_requests(P) -> list:
    """Stage 01's judge requests of a recipe: every corpus' judge sample with the judge prompt."""
    from mi_llm import params
    from mi_llm.data import corpora, quality

    loaded = {n: (corpora.load(n, params.path(f)), None) for n, f in P.corpora.sources.items()}
    template, q = quality.prompt_template(P.quality.prompt_version), P.quality
    return [
        api.Request(f"{n}:{d.id}", quality.judge_messages(d, template, q.max_dialogue_chars)[0])
        for n, ds in quality.judge_samples(loaded, P).items()
        for d in ds
    ]


def embedded_rates(provider: str, concurrencies: list[int], tmp: Path) -> list[tuple]:
    """(concurrency, requests, wall_s, req/s, start_s) of the embedded model on stage 01's requests."""
    from dataclasses import replace

    from mi_llm import params

    P = params.load(params.ROOT / "params/smoke.yaml")
    reqs = judge_requests(P)
    settings = {"temperature": P.quality.temperature, "max_tokens": P.quality.max_tokens}
    out = []
    for c in concurrencies:
        p = replace(P.llm, provider=provider, max_concurrency=c)
        t0 = time.perf_counter()
        with api.endpoint(p, log_dir=tmp) as ep:
            warm = [
                api.Request(f"warm{i}", r.messages[:1] + [{"role": "user", "content": "你好"}])
                for i, r in enumerate(reqs[:c])
            ]  # one batch at this side's size
            api.complete(
                ep,
                warm,
                llm_params=p,
                cache_path=tmp / f"warm-{provider}-{c}.sqlite",
                settings=settings,
                truncated_ok=True,
                desc="warm-up",
            )
            start = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = api.complete(
                ep,
                reqs,
                llm_params=p,
                cache_path=tmp / f"{provider}-{c}.sqlite",
                settings=settings,
                truncated_ok=True,
                desc=f"{provider} x{c}",
            )
            wall = time.perf_counter() - t1
        assert all(r.text is not None and not r.cached for r in res)
        out.append((c, len(reqs), wall, len(reqs) / wall, start))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-embedded", action="store_true", help="the plumbing measurement only")
    ap.add_argument(
        "--serve", action="store_true", help="also the embedded model behind transformers serve"
    )
    a = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(lambda r: "听起来你很在意这件事。", latency_s=LATENCY_S) as url,
    ):
        rows = {c: rate(c, n, url, Path(tmp)) for c, n in N.items()}
    ratio = rows[16][0] / rows[1][0]
    print(
        f"\n1. client plumbing: test server, latency {LATENCY_S * 1000:.0f} ms per request, no compute"
    )
    print(f"{'concurrency':>11} {'requests':>8} {'wall_s':>7} {'req/s':>7}")
    for c, (r, w) in rows.items():
        print(f"{c:>11} {N[c]:>8} {w:>7.2f} {r:>7.2f}")
    print(f"ratio 16 vs 1: {ratio:.1f}x (target >= 8x)", flush=True)
    if not a.no_embedded:
        from mi_llm import params

        smoke = params.load(params.ROOT / "params/smoke.yaml").llm.max_concurrency
        print(
            f"\n2. the embedded model on stage 01's judge requests (smoke recipe), concurrency 1 vs {smoke}"
        )
        print(
            f"{'provider':>9} {'concurrency':>11} {'requests':>8} {'start_s':>7} {'wall_s':>7} {'req/s':>7}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            for provider in ["embedded"] + ["serve"] * a.serve:
                got = embedded_rates(provider, [1, smoke], Path(tmp))
                for c, n, wall, r, start in got:
                    print(
                        f"{provider:>9} {c:>11} {n:>8} {start:>7.1f} {wall:>7.1f} {r:>7.2f}",
                        flush=True,
                    )
                print(f"{provider}: {smoke} vs 1: {got[1][3] / got[0][3]:.1f}x")
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (this process)"
    )
    return 0 if ratio >= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
