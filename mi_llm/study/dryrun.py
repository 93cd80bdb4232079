"""The paper's study rehearsed on CPU: `python -m mi_llm dryrun params/paper-dryrun.yaml`.

Before the stages run, the command writes each model of `model_paths` as a tiny random-weight
checkpoint of its real architecture with its real tokenizer (mi_llm.models.snapshots), starts the
strong-model stand-in (mi_llm.llm.standin) at `llm.base_url`, which must be a 127.0.0.1 address, and puts
a dummy key in `$<llm.api_key_env>` (never OPENAI_API_KEY: the stand-in never sees a real key). Then
the study runner (mi_llm.study.runner.run with dry_run=True) runs the notebooks as
`python -m mi_llm run` does and stops the stand-in.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from mi_llm import params as params_mod

DUMMY_KEY = "dry-run-key-not-a-secret"


def check(P) -> int:
    """The stand-in's port; raises ParamsError when the params could reach a real endpoint or key."""
    url = urlparse(P.llm.base_url or "")
    if P.llm.provider != "remote" or url.hostname != "127.0.0.1" or not url.port:
        raise params_mod.ParamsError(
            f"{P.name}: a dry run needs llm.provider remote and llm.base_url http://127.0.0.1:<port>/v1, "
            f"got provider {P.llm.provider!r}, base_url {P.llm.base_url!r}"
        )
    if P.llm.api_key_env == "OPENAI_API_KEY":
        raise params_mod.ParamsError(
            f"{P.name}: llm.api_key_env must not be OPENAI_API_KEY in a dry run "
            "(it is set to a dummy key)"
        )
    return url.port


def build_models(P) -> dict:
    """Write (once) the tiny checkpoint of every model in model_paths; {name: folder}."""
    from mi_llm.models import snapshots

    return {
        name: snapshots.tiny_checkpoint(name, params_mod.path(folder))
        for name, folder in P.model_paths.items()
    }


@contextmanager
def standins(P):
    """The tiny checkpoints written and the stand-in serving, with the dummy key set, for a run
    of the validated params P (or a params file); `python -m mi_llm dryrun` runs the stages inside."""
    from mi_llm.llm import standin

    P = P if isinstance(P, params_mod.Params) else params_mod.load(P)
    port = check(P)
    build_models(P)
    old = os.environ.get(P.llm.api_key_env)
    os.environ[P.llm.api_key_env] = DUMMY_KEY
    try:
        with standin.serving(port) as url:
            yield url
    finally:
        if old is None:
            os.environ.pop(P.llm.api_key_env, None)
        else:
            os.environ[P.llm.api_key_env] = old


NEXT_ON_GPU = """[mi_llm] dry run done. Next, on the GPU machine (docs/paper-on-gpu.md):
  make setup                                      # .venv with the project
  bash benchmarks/gpu_check.sh                    # CUDA torch + [gpu] extras; GPU tests; throughput
  python -m mi_llm models fetch --params params/paper.yaml   # weights, pinned in models.lock.json
  python -m mi_llm data fetch                     # the five corpora, pinned in data/full/LOCK.json
  export OPENAI_API_KEY=...                       # the judge, transcriber and MITI coder
  python -m mi_llm check params/paper.yaml
  python -m mi_llm plan params/paper.yaml         # requests, tokens, API cost, GPU hours (estimates)
  HF_HUB_OFFLINE=1 python -m mi_llm run params/paper.yaml
(`make paper` runs the last six steps and asks before the run starts.)"""


def tiny_sft_run(
    root: str | Path,
    model: str = "llama3-8b-chinese-chat-v2",
    device: str = "cpu",
    max_steps: int = 2,
) -> Path:
    """A params file for a few LoRA steps of `model`'s tiny checkpoint on the shipped PsyDTCorpus
    dialogues (runs under $MI_LLM_RUNS=<root>/runs): what `accelerate launch ... -m mi_llm.train.sft` takes
    in the accelerate tests and in benchmarks/gpu_check.sh. Returns the params file."""

    import yaml

    from mi_llm.models import snapshots
    from mi_llm.train import sft

    root = Path(root)
    name = "tiny-sft"
    ckpt = snapshots.tiny_checkpoint(model, root / "models" / model)
    write_sample_train(root / "runs" / name / sft.TRAIN_FILE)
    p = {
        "name": name,
        "device": device,
        "model_paths": {model: str(ckpt)},
        "sft": {
            "models": [model],
            "context_turns": 4,
            "lora": {"r": 8, "lora_alpha": 16},
            "config": {
                "max_steps": max_steps,
                "per_device_train_batch_size": 2,
                "save_steps": max_steps,
                "max_length": 256,
                "learning_rate": 1e-3,
                "logging_steps": 1,
            },
        },
    }
    params_mod.from_dict(p)  # validate before anything launches
    f = root / f"{name}.yaml"
    f.write_text(yaml.safe_dump(p, allow_unicode=True), encoding="utf-8")
    return f


def write_sample_train(file: Path) -> Path:
    """A stage-02 train.jsonl of the shipped PsyDTCorpus sample's dialogues, untagged, at `file`."""
    import json

    dialogues = json.loads(
        (params_mod.ROOT / "data/PsyDTCorpus/PsyDTCorpus_sample.json").read_text("utf-8")
    )
    lines = []
    for d in dialogues:
        rec = {
            "id": str(d["id"]),
            "source_corpus": "psydtcorpus",
            "source_id": str(d["id"]),
            "prompt_version": "none",
            "topic": d.get("normalizedTag"),
            "messages": d["messages"],
        }
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(lines), encoding="utf-8")
    return file


if __name__ == "__main__":  # python -m mi_llm.study.dryrun tiny-sft <root> [model] [device]
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "tiny-sft":
        print(tiny_sft_run(sys.argv[2], *sys.argv[3:5]))
    else:
        sys.exit("usage: python -m mi_llm.study.dryrun tiny-sft <root> [model] [device]")
