"""Loading the full corpora: seconds to load and describe each at its real size and layout.

The full downloads are not on the machines this project is built on (ModelScope is out of reach
and SmileChat is 466 MB), so this generates data of the same size and layout: CPsyCounD's 3,134
CRLF text files, SmileChat's 55,165 JSON files (~8.4 kB each, with sentence annotations),
PsyDTCorpus's 4,760-dialogue train file (~18 turns and a system prompt each), SoulChatCorpus's
258,354 multi-turn dialogues (1,517,344 turns) in one JSON array, and AnnoMI's two real CSVs (the
shipped files are complete). With a folder of real downloads (`--real data/full`) it times those.
Stage 01 loads every dialogue and describes it (quality.describe), so both are timed.

    .venv/bin/python benchmarks/corpus_load.py [--scale 0.1] [--only soulchatcorpus] [--real DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from mi_llm.data import corpora, quality, sources

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 60.0
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
SIZES = {"cpsycound": 3134, "smilechat": 55165, "psydtcorpus": 4760, "soulchatcorpus": 258354}


def _text(rng: random.Random, mean: int) -> str:
    n = max(4, int(rng.gauss(mean, mean / 3)))
    body = "".join(rng.choices(CJK, k=n))
    return body[: n // 2] + "，" + body[n // 2 :] + rng.choice("。？！")


def gen_cpsycound(out: Path, n: int, rng) -> Path:
    d = out / "CPsyCounD" / "Data"
    d.mkdir(parents=True)
    for i in range(n):
        turns = [
            f"{'来访者' if t % 2 == 0 else '心理咨询师'}：{_text(rng, 45)}"
            for t in range(rng.randint(12, 22))
        ]
        (d / f"case_{i}.txt").write_bytes("\r\n\r\n".join(turns).encode())
    return d


def gen_smilechat(out: Path, n: int, rng) -> Path:
    d = out / "data"
    d.mkdir(parents=True)
    for i in range(n):
        msgs = []
        for t in range(rng.randint(8, 14)):
            sents = [_text(rng, 30) for _ in range(rng.randint(1, 4))]
            msgs.append(
                {
                    "role": "client" if t % 2 == 0 else "counselor",
                    "content": "".join(sents),
                    "annotation": [{"sentence": s, "label": ""} for s in sents],
                }
            )
        (d / f"{i}.json").write_text(json.dumps(msgs, ensure_ascii=False, indent=4), "utf-8")
    return d


def _records(n: int, rng, turns: tuple[int, int], system: bool, tag: str) -> list:
    recs = []
    for i in range(n):
        msgs = [{"role": "system", "content": _text(rng, 300)}] if system else []
        msgs += [
            {
                "role": "user" if t % 2 == 0 else "assistant",
                "content": _text(rng, 40 if t % 2 == 0 else 90),
            }
            for t in range(2 * rng.randint(*turns))
        ]
        recs.append(
            {"id": i, tag: rng.choice(["婚恋", "家庭", "职场", "学业", "情绪"]), "messages": msgs}
        )
    return recs


def gen_psydtcorpus(out: Path, n: int, rng) -> Path:
    f = out / "PsyDTCorpus_train_mulit_turn_packing.json"
    f.write_text(
        json.dumps(_records(n, rng, (7, 11), True, "normalizedTag"), ensure_ascii=False), "utf-8"
    )
    return f


def gen_soulchatcorpus(out: Path, n: int, rng) -> Path:
    f = out / "SoulChatCorpus.json"
    f.write_text(json.dumps(_records(n, rng, (2, 4), False, "topic"), ensure_ascii=False), "utf-8")
    return f


PATHS = {
    "cpsycound": "CPsyCounD/Data",
    "smilechat": "data",
    "psydtcorpus": "PsyDTCorpus_train_mulit_turn_packing.json",
    "soulchatcorpus": "SoulChatCorpus.json",
}
GENERATORS = {
    "cpsycound": gen_cpsycound,
    "smilechat": gen_smilechat,
    "psydtcorpus": gen_psydtcorpus,
    "soulchatcorpus": gen_soulchatcorpus,
}


def _bytes(path: Path) -> tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(name: str, path: Path) -> dict:
    """Wall and CPU seconds of loading (corpora.load_with_report) and describing one corpus."""
    t0, c0 = time.perf_counter(), time.process_time()
    dialogues, report = corpora.load_with_report(name, path)
    t1, c1 = time.perf_counter(), time.process_time()
    stats = quality.describe(dialogues, report)
    t2, c2 = time.perf_counter(), time.process_time()
    n_files, size = _bytes(path)
    row = {
        "corpus": name,
        "files": n_files,
        "MB": size / 1e6,
        "dialogues": len(dialogues),
        "turns": stats["n_turns"],
        "load_s": t1 - t0,
        "load_cpu": c1 - c0,
        "describe_s": t2 - t1,
        "describe_cpu": c2 - c1,
    }
    print(_row(row), flush=True)
    return row


HEAD = (
    f"{'corpus':<15}{'files':>8}{'MB':>8}{'dialogues':>11}{'turns':>11}{'load s':>8}"
    f"{'(cpu)':>7}{'describe s':>12}{'(cpu)':>7}  load <= {BUDGET_S:.0f} s: wall, cpu"
)


def _row(r: dict) -> str:
    return (
        f"{r['corpus']:<15}{r['files']:>8,}{r['MB']:>8.1f}{r['dialogues']:>11,}"
        f"{r['turns']:>11,}{r['load_s']:>8.1f}{r['load_cpu']:>7.1f}{r['describe_s']:>12.1f}"
        f"{r['describe_cpu']:>7.1f}  {'yes' if r['load_s'] <= BUDGET_S else 'NO':>4}, "
        f"{'yes' if r['load_cpu'] <= BUDGET_S else 'NO'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes")
    ap.add_argument("--only", nargs="+", choices=[*GENERATORS, "annomi"])
    ap.add_argument("--real", help="a `data fetch` folder: time its corpora instead")
    ap.add_argument("--keep", help="generate into this folder and keep it (reused next time)")
    a = ap.parse_args()
    names = a.only or [*GENERATORS, "annomi"]
    rows = []
    if a.real:
        for n in names:
            s = sources.SOURCES[n]
            path = Path(sources.load_path(s, a.real))
            if path.exists():
                rows.append(measure(n, path))
    else:
        tmp = Path(a.keep or tempfile.mkdtemp(prefix="corpus_load_"))
        try:
            for n in names:
                if n == "annomi":
                    rows.append(measure(n, ROOT / "data" / "AnnoMI"))
                    continue
                count = max(1, round(SIZES[n] * a.scale))
                t0 = time.perf_counter()
                done = tmp / n / f".{count}"  # a kept folder is generated once
                if not done.exists():
                    shutil.rmtree(tmp / n, ignore_errors=True)
                    (tmp / n).mkdir(parents=True)
                    GENERATORS[n](tmp / n, count, random.Random(n))
                    done.touch()
                    print(f"generated {n}: {count:,} dialogues in {time.perf_counter() - t0:.0f} s")
                path = tmp / n / PATHS[n]
                rows.append(measure(n, path))
        finally:
            if not a.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\nseconds of wall time, and (cpu) of this process's CPU time: on a busy machine the wall"
    )
    print("time includes waiting for a core\n" + HEAD)
    for r in rows:
        print(_row(r))


if __name__ == "__main__":
    main()
