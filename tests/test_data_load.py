"""Full-size loading: stage 01's normalisation is NFKC exactly (with a fast path), description counts
duplicates as an independent count does, and the benchmark's generated layouts are the real ones."""

from __future__ import annotations

import importlib.util
import random
import re
import unicodedata
from pathlib import Path

from mi_llm.data import corpora, quality
from mi_llm.data.schema import Dialogue, Turn

ROOT = Path(__file__).resolve().parents[1]


def _nfkc_key(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def test_normalise_is_nfkc_lowercase_without_whitespace():
    rng = random.Random(0)
    codes = [
        *range(0x250),
        *range(0x2000, 0x2070),
        *range(0x3000, 0x3100),
        *range(0xFF00, 0xFFF0),
        *range(0x4E00, 0x4E40),
        0x301,
        0x308,
        0x2460,
        0xFB01,
        0x85,
        0xA0,
        0x1680,
        0x3000,
        0x1C,
        0x1F,
        0xFF21,
        0xFF41,
        0xFF10,
    ]
    pool = [chr(c) for c in codes]
    texts = ["".join(rng.choices(pool, k=rng.randint(1, 40))) for _ in range(20000)]
    texts += ["你好，ＡＢＣ？　我很好！", "Ａ\u0301", "ｶﾞ", "①２３"]
    assert [quality.normalise(t) for t in texts] == [_nfkc_key(t) for t in texts]


def test_describe_counts_duplicates_and_repeated_turns():
    def d(i, *texts):
        return Dialogue(
            str(i),
            "c",
            [Turn("client" if k % 2 == 0 else "counselor", t) for k, t in enumerate(texts)],
        )

    ds = [
        d(0, "我很难过。", "你愿意说说吗？"),
        d(1, "我很难过．", "你愿意说说吗?"),  # a width variant
        d(2, "我 很难过。", "你愿意说说吗？"),
        d(3, "别的事", "好的"),
    ]
    s = quality.describe(ds)
    keys = [tuple((t.speaker, _nfkc_key(t.text)) for t in x.turns) for x in ds]
    assert s["duplicate_rate"] == (len(keys) - len(set(keys))) / len(keys) == 0.25
    counselor = [_nfkc_key(t.text) for x in ds for t in x.turns if t.speaker == "counselor"]
    assert s["repeated_turn_rate"] == (len(counselor) - len(set(counselor))) / len(counselor)


def test_benchmark_generates_the_loaders_formats(tmp_path):
    spec = importlib.util.spec_from_file_location("corpus_load", ROOT / "benchmarks/corpus_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, gen in bench.GENERATORS.items():
        (tmp_path / name).mkdir()
        path = gen(tmp_path / name, 5, random.Random(name))
        ds = corpora.load(name, path)
        assert len(ds) == 5 and all(len(x.turns) >= 4 for x in ds), name
    real = corpora.load("psydtcorpus", ROOT / "data/PsyDTCorpus/PsyDTCorpus_sample.json")
    fake = corpora.load("psydtcorpus", tmp_path / "psydtcorpus")
    assert set(real[0].meta) == set(fake[0].meta)  # topic and system prompt, as published
