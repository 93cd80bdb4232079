#!/usr/bin/env bash
# The GPU check: what a machine with one NVIDIA GPU runs first, in at most 8 minutes, from the
# repository root (after `make setup`):
#   bash benchmarks/gpu_check.sh             # installs the CUDA build of torch, the [gpu] extras
#                                            # (DeepSpeed, Liger) and flash-attn where it installs
#   bash benchmarks/gpu_check.sh --dry-run   # CPU, tiny shapes, installs nothing: tests the wiring (CI)
# Steps: the `-m gpu` tests (the hf decoding engine on CUDA among them); benchmarks/sft_throughput.py
# --gpu (8B Llama-3-shaped, TRL defaults and TRL packing vs the project: tokens/s, MFU, peak memory);
# one ZeRO-2 step through `accelerate launch -m mi_llm.train.sft` and one FSDP step on the tiny Llama 3
# checkpoint; benchmarks/eval_generation.py (replies/s of the cpu engine against model.generate
# batched, the hf engine, and one prompt at a time).
# Writes benchmarks/results/gpu-<UTC time>.json (dry run: gpu-<UTC time>-dryrun.json): for every step
# its command, exit status, seconds and the tail of its output (the benchmarks' printed tables).
# Exits non-zero when a required step failed; optional steps (flash-attn) are recorded either way.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-.venv/bin/python}
TORCH=${MI_LLM_TORCH:-2.13.0}                                   # the CPU build's version, as CUDA wheel
CUDA_INDEX=${MI_LLM_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu-${STAMP}$([[ $DRY == 1 ]] && echo -dryrun).json}
WORK=$(mktemp -d)
mkdir -p "$WORK/logs" "$(dirname "$OUT")"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MI_LLM_RUNS="$WORK/runs"
T_START=$(date +%s)

# step NAME REQUIRED(1|0) TIMEOUT_S COMMAND...: run it, keep its output, record status and seconds
step() {
  local name=$1 required=$2 limit=$3
  shift 3
  echo "[gpu_check] $name: $*" >&2
  local t0 rc
  t0=$(date +%s%N)
  timeout "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$required" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" "$*" >>"$WORK/steps.tsv"
  [[ $rc == 0 ]] || echo "[gpu_check] $name exited $rc (log: $WORK/logs/$name.log)" >&2
}

# pytest exits 5 when it selects no test: without CUDA the *_gpu.py files are not collected
GPU_TESTS="\"$PY\" -m pytest -q -m gpu tests/; rc=\$?; [[ $DRY == 1 && \$rc == 5 ]] && exit 0; exit \$rc"

DEVICE=$([[ $DRY == 1 ]] && echo cpu || echo cuda)
TINY=$("$PY" -m mi_llm.study.dryrun tiny-sft "$WORK" llama3-8b-chinese-chat-v2 "$DEVICE" 2>"$WORK/logs/tiny.log" | tail -1)
TINY_FSDP=$("$PY" -m mi_llm.study.dryrun tiny-sft "$WORK/fsdp" llama3-8b-chinese-chat-v2 "$DEVICE" 2>>"$WORK/logs/tiny.log" | tail -1)
if [[ ! -f "$TINY" || ! -f "$TINY_FSDP" ]]; then  # the launch steps need the tiny run's params file
  echo "[gpu_check] the tiny SFT run could not be written:" >&2
  tail -20 "$WORK/logs/tiny.log" >&2
  exit 1
fi
if [[ $DRY == 0 ]]; then
  step install_torch 1 240 "$PY" -m pip install -q "torch==$TORCH" --index-url "$CUDA_INDEX"
  step install_gpu_extras 1 180 "$PY" -m pip install -q -e ".[gpu]"
  step install_flash_attn 0 90 "$PY" -m pip install -q --no-build-isolation flash-attn  # no wheel: a build may not fit
  step device 1 60 "$PY" -c "import torch; print(torch.cuda.get_device_name(0), 'cuda', torch.version.cuda, 'torch', torch.__version__)"
  step gpu_tests 1 300 bash -c "$GPU_TESTS"
  step sft_throughput 1 420 "$PY" benchmarks/sft_throughput.py --gpu
  step zero2_step 1 240 "$PY" -m accelerate.commands.launch --config_file accelerate/deepspeed_zero2.yaml \
    --num_processes 1 -m mi_llm.train.sft "$TINY"
  step fsdp_step 1 240 env MI_LLM_RUNS="$WORK/fsdp/runs" "$PY" -m accelerate.commands.launch \
    --config_file accelerate/fsdp.yaml --num_processes 1 -m mi_llm.train.sft "$TINY_FSDP"
  step eval_generation 1 240 "$PY" benchmarks/eval_generation.py --device cuda --n 64 --batch-size 32
else
  step device 1 60 "$PY" -c "import torch; print('cpu', 'torch', torch.__version__, 'cuda available', torch.cuda.is_available())"
  step gpu_tests 1 300 bash -c "$GPU_TESTS"
  step sft_throughput 1 900 "$PY" benchmarks/sft_throughput.py --seq 256 --batch 1 --steps 1 --warmup 0
  # DeepSpeed needs CUDA: the same launch of one step, through the DDP config on the CPU
  step zero2_step 1 600 "$PY" -m accelerate.commands.launch --config_file accelerate/ddp.yaml \
    --num_processes 1 -m mi_llm.train.sft "$TINY"
  step eval_generation 1 600 "$PY" benchmarks/eval_generation.py --n 4 --batch-size 4 --max-new-tokens 4
fi

"$PY" - "$WORK" "$OUT" "$DRY" "$T_START" <<'EOF'
import json, platform, sys, time
from pathlib import Path

work, out, dry, t_start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    name, required, rc, secs, cmd = line.split("\t", 4)
    log = (work / "logs" / f"{name}.log").read_text(errors="replace")
    steps.append({"name": name, "required": required == "1", "rc": int(rc), "seconds": round(int(secs) / 1000, 1),
                  "command": cmd, "output_tail": log[-4000:]})
ok = all(s["rc"] == 0 for s in steps if s["required"])
result = {"dry_run": dry, "ok": ok, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "wall_s": round(time.time() - t_start, 1), "host": platform.node(),
          "device": next((s["output_tail"].strip() for s in steps if s["name"] == "device"), None),
          "steps": steps}
out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
print(f"[gpu_check] {'ok' if ok else 'FAILED'} in {result['wall_s']} s -> {out}")
for s in steps:
    print(f"  {s['name']:<20} rc={s['rc']:<4} {s['seconds']:>7.1f} s{'' if s['required'] else '  (optional)'}")
sys.exit(0 if ok else 1)
EOF
