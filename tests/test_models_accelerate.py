"""Every config in accelerate/ launched for real where the CPU allows, on a tiny Llama 3 checkpoint
with its real tokenizer, as 2 processes on gloo through `accelerate launch -m mi_llm.train.sft`; DeepSpeed
needs CUDA: its configs are parsed and validated here and run by benchmarks/gpu_check.sh.

What the CPU allows (accelerate 1.x): under `--cpu` the launcher starts ONE process whatever
--num_processes says, so these launches go through its multi-process launcher (torch.distributed.run)
with the model on the CPU (device: cpu), where torch.distributed uses gloo. DDP runs as configured.
FSDP: accelerate applies the FSDP plugin only on accelerator devices; on CPU the launch runs (with
fsdp_sync_module_states and fsdp_cpu_ram_efficient_loading off, which need a device) and trains as
plain 2-process data parallel, so FSDP's sharding itself is checked by gpu_check.sh on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml

from mi_llm.params import ROOT
from mi_llm.study import dryrun

CONFIGS = sorted(p.stem for p in (ROOT / "accelerate").glob("*.yaml"))
LAUNCHED = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}  # launched on CPU here
CPU_OVERRIDES = {
    "fsdp": ["--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
}
VALIDATED = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}  # need CUDA: parsed and checked only


def test_every_config_is_either_launched_or_validated():
    assert set(CONFIGS) == set(LAUNCHED) | set(VALIDATED)


@pytest.mark.parametrize("name", sorted(VALIDATED))
def test_deepspeed_configs_validate(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin

    file = ROOT / "accelerate" / f"{name}.yaml"
    cfg = ClusterConfig.from_yaml_file(str(file))
    assert cfg.distributed_type == "DEEPSPEED" and cfg.mixed_precision == "bf16"
    ds = cfg.deepspeed_config
    assert ds["zero_stage"] == VALIDATED[name] and ds["offload_optimizer_device"] == "none"
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        zero3_init_flag=ds["zero3_init_flag"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False),
    )
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == VALIDATED[name]
    if VALIDATED[name] == 3:  # the adapter must be saved gathered, loadable without DeepSpeed
        assert plugin.deepspeed_config["zero_optimization"][
            "stage3_gather_16bit_weights_on_model_save"
        ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return dryrun.tiny_sft_run(tmp_path_factory.mktemp("acc"), max_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAUNCHED))
def test_config_launches_two_processes_on_cpu(tiny_run, name):
    cfg = yaml.safe_load((ROOT / "accelerate" / f"{name}.yaml").read_text())
    assert cfg["distributed_type"] == LAUNCHED[name]
    root = tiny_run.parent
    out = root / "runs" / "tiny-sft" / "03_sft" / "llama3-8b-chinese-chat-v2"
    if out.exists():  # each config trains from scratch
        import shutil

        shutil.rmtree(out)
    env = {
        **os.environ,
        "MI_LLM_RUNS": str(root / "runs"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate" / f"{name}.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        *CPU_OVERRIDES.get(name, []),
        "-m",
        "mi_llm.train.sft",
        str(tiny_run),
    ]
    r = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert len(re.findall(r"Packing train dataset: 100%", log)) == 2  # one dataset per process
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and math.isfinite(report["last_loss"])
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }  # 2 ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
