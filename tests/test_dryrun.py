"""The dry run's command-line entry that writes a tiny SFT run (benchmarks/gpu_check.sh uses it)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from mi_llm import params
from mi_llm.train import sft


def test_tiny_sft_command_writes_a_valid_params_file_and_its_training_split(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mi_llm.study.dryrun", "tiny-sft", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    f = out.stdout.strip().splitlines()[-1]
    with open(f, encoding="utf-8") as fh:
        P = params.from_dict(yaml.safe_load(fh))
    assert P.sft.models == ["llama3-8b-chinese-chat-v2"]
    assert (tmp_path / "runs" / P.name / sft.TRAIN_FILE).stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "mi_llm.study.dryrun"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "usage" in bad.stderr
