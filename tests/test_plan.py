"""`python -m mi_llm plan`: requests, tokens, API cost and GPU hours estimated from the params, the
corpora's dialogues and a GPU check's measured throughput, before anything runs."""

from __future__ import annotations

import json

import pytest

from mi_llm import params
from mi_llm.__main__ import main
from mi_llm.study import plan

SFT_TAIL = """config        dtype    attn               packing liger loss pos tok/step  s/step     tok/s  TFLOP/s    MFU  peak MB peak RSS MB
defaults      bf16     sdpa               False   False False        8192    2.10    3900.0  200.000  20.2%    50000        3000
project       bf16     flash_attention_2  True    True  True        16384    2.00    8192.0  400.000  40.4%    40000        3000
project / defaults tokens/s: 2.10x"""
GEN_TAIL = """       batched:  12.50 replies/s   1600.0 new tok/s  (5.1 s for 64 replies)
 one at a time:   1.00 replies/s    128.0 new tok/s  (64.0 s for 64 replies)"""


@pytest.fixture(scope="module")
def paper():
    P = params.load("params/paper.yaml")
    return P, plan.shapes(P), plan._tokens_per_char()


def _gpu_file(tmp_path, sft_rc=0):
    f = tmp_path / "gpu-20260101-000000.json"
    f.write_text(
        json.dumps(
            {
                "device": "NVIDIA H100 cuda 12.8 torch 2.13.0",
                "steps": [
                    {"name": "sft_throughput", "rc": sft_rc, "output_tail": SFT_TAIL},
                    {"name": "eval_generation", "rc": 0, "output_tail": GEN_TAIL},
                ],
            }
        )
    )
    return f


def test_requests_and_tokens_follow_the_params(paper):
    P, shape, tpc = paper
    assert 0.2 < tpc < 2.0 and set(shape) == set(P.corpora.sources)
    lines = plan.estimate(P, shape, tpc, {})
    first = lines[0]
    assert first.requests == len(shape) * P.quality.judge_sample
    assert first.completion_tokens == first.requests * P.quality.max_tokens
    assert lines[1].requests == P.transcription.n_train + P.transcription.n_test
    P.quality.judge_sample *= 2
    try:
        assert plan.estimate(P, shape, tpc, {})[0].requests == 2 * first.requests
    finally:
        P.quality.judge_sample //= 2
    assert all(ln.gpu_hours is None for ln in lines)  # no GPU check: no GPU hours claimed


def test_cost_is_tokens_at_the_recipes_prices(paper):
    P, shape, tpc = paper
    line = plan.estimate(P, shape, tpc, {})[1]
    price = P.llm.prices[P.llm.model]
    want = (
        line.prompt_tokens * price["prompt"] + line.completion_tokens * price["completion"]
    ) / 1e6
    assert plan.cost(P, line) == pytest.approx(want) and want > 0
    P.llm.prices = {}
    try:
        assert plan.cost(P, line) is None
        out = plan.text(P, plan.estimate(P, shape, tpc, {}), shape, tpc, {})
        assert "no price" in out and "without a price in llm.prices" in out
    finally:
        P.llm.prices = {"gpt-4o": price}


def test_gpu_hours_from_the_gpu_checks_measured_throughput(paper, tmp_path):
    P, shape, tpc = paper
    gpu = plan.gpu_throughput(str(_gpu_file(tmp_path)))
    assert gpu["sft_tokens_s"] == 8192.0 and gpu["gen_tokens_s"] == 1600.0
    lines = plan.estimate(P, shape, tpc, gpu)
    sft, gen = lines[2], lines[3]
    dlg = sum(s["chars"] for s in shape.values()) / len(shape) * tpc
    tokens = P.transcription.n_train * dlg * 3 * len(P.sft.models)
    assert sft.gpu_hours == pytest.approx(tokens / 8192.0 / 3600)
    assert gen.gpu_hours > 0
    failed = plan.gpu_throughput(str(_gpu_file(tmp_path, sft_rc=1)))
    assert "sft_tokens_s" not in failed  # a failed step measures nothing


def test_the_command_prints_estimates_labelled_as_such(capsys, tmp_path):
    assert main(["plan", "params/paper.yaml", "--gpu-results", str(_gpu_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Plan for paper (ESTIMATES, nothing has run")
    assert "estimated total: API ~$" in out and "GPU ~" in out and "NVIDIA H100" in out
    assert "weights: glm-4-9b-chat not fetched yet (python -m mi_llm models fetch" in out
    assert main(["plan", "params/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert "local" in out and "GPU hours: none, the recipe runs on the CPU" in out


def test_a_wrong_results_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "gpu-x.json"
    bad.write_text("not json")
    assert main(["plan", "params/paper.yaml", "--gpu-results", str(bad)]) == 2
    assert main(["plan", "params/paper.yaml", "--gpu-results", str(tmp_path / "none")]) == 2
    out = capsys.readouterr().out
    assert "not a GPU check result" in out and "no such file" in out and "Traceback" not in out


def test_the_dry_run_ends_with_the_gpu_sequence_and_every_step_exists(monkeypatch, capsys):
    import re
    import shlex

    from mi_llm.study import dryrun, runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: params.ROOT / "runs/paper-dryrun")
    assert main(["dryrun", "params/paper-dryrun.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(dryrun.NEXT_ON_GPU)
    assert (params.ROOT / "docs/paper-on-gpu.md").exists()
    assert (params.ROOT / "benchmarks/gpu_check.sh").exists()
    for line in re.findall(r"python -m mi_llm ([^#\n]+)", dryrun.NEXT_ON_GPU):
        words = shlex.split(line)
        with pytest.raises(SystemExit) as e:  # every subcommand parses (its --help exits 0)
            main([*words, "--help"])
        assert e.value.code == 0, line
