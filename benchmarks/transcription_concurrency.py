"""Requests/s of llm.complete at concurrency 1 and 16 against the local test server (200 ms latency).

Transcription is I/O bound: with a fixed server latency, throughput should scale with the requests in
flight. Run: .venv/bin/python benchmarks/transcription_concurrency.py  (prints a table and the ratio;
exits 1 when the ratio is below 8x).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import serve

from mi_llm import llm
from mi_llm.params import LLMParams

LATENCY_S = 0.2  # server-side delay per request
N = {1: 20, 16: 160}  # requests per run: ~4 s at concurrency 1, 10 waves at 16


def rate(concurrency: int, n: int, url, tmp: Path) -> tuple[float, float]:
    """Requests/s and wall seconds for n fresh (uncached) requests at the given concurrency."""
    p = LLMParams(provider="remote", max_concurrency=concurrency, request_timeout=30, max_retries=0)
    ep = llm.Endpoint(url, "bench", "bench-key", "remote")
    reqs = [llm.Request(f"c{concurrency}-{i}", [{"role": "user", "content": f"第{i}段对话"}]) for i in range(n)]
    t0 = time.perf_counter()
    res = llm.complete(ep, reqs, llm_params=p, cache_path=tmp / f"c{concurrency}.sqlite",
                       settings={"max_tokens": 64}, desc=f"concurrency {concurrency}")
    wall = time.perf_counter() - t0
    assert all(r.ok and not r.cached for r in res)
    return n / wall, wall


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, serve(lambda r: "听起来你很在意这件事。", latency_s=LATENCY_S) as url:
        rows = {c: rate(c, n, url, Path(tmp)) for c, n in N.items()}
    ratio = rows[16][0] / rows[1][0]
    print(f"\nserver latency {LATENCY_S * 1000:.0f} ms per request")
    print(f"{'concurrency':>11} {'requests':>8} {'wall_s':>7} {'req/s':>7}")
    for c, (r, w) in rows.items():
        print(f"{c:>11} {N[c]:>8} {w:>7.2f} {r:>7.2f}")
    print(f"ratio 16 vs 1: {ratio:.1f}x (target >= 8x)")
    return 0 if ratio >= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
