"""Stage 03: LoRA supervised fine-tuning with TRL's SFTTrainer on the MI corpus of stage 02.

One call per model: `train(P, name)` reads runs/<name>/02_mi_transcription/train.jsonl, turns it
into chat samples (whole dialogues, or one sample per long-enough counselor reply with a window of
preceding turns: the therapy pipeline's fix against platitudes), trains a LoRA adapter with the
loss on assistant tokens only, checkpoints every `save_steps` and resumes from the last checkpoint
after an interruption, and writes runs/<name>/03_sft/<model>/{adapter/, train_log.csv, report.json}.

Multi-GPU: `accelerate launch --config_file accelerate/ddp.yaml -m mi_llm.train.sft params/paper.yaml
--model glm-4-9b-chat` runs the same function under DDP / DeepSpeed / FSDP.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import resource
import sys
import time
from pathlib import Path

from mi_llm import stages
from mi_llm.data.schema import DataError, read_split
from mi_llm.models import devices, registry, tokenizer_files
from mi_llm.params import Params
from mi_llm.params import path as params_path
from mi_llm.train.identity import IDENTITY_FILE, _stale, identity

STAGE = "03_sft"
TRAIN_FILE = stages.TRAIN
# in 03_sft/<model>/: the adapter folder, the training log, the report (stages declares them)
ADAPTER_DIR, LOG_FILE, REPORT_FILE = map(
    stages.file_name, (stages.ADAPTER, stages.TRAIN_LOG, stages.SFT_REPORT)
)
LOG_FIELDS = ["step", "loss", "learning_rate", "tokens_per_s"]
# keys mi_llm sets itself from the run (a params file may not override them)
OWNED_KEYS = {"output_dir", "seed", "use_cpu"}
# the project's configuration on top of TRL's defaults; any key in params.sft.config wins
PROJECT_DEFAULTS = {
    "assistant_only_loss": True,  # loss on the counselor's replies (and their end-of-turn token) only
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_total_limit": 2,  # the last checkpoints suffice to resume
    "include_num_input_tokens_seen": "non_padding",  # for tokens/s
    "gradient_checkpointing_kwargs": {
        "use_reentrant": False
    },  # the variant that works with frozen bases
}


# ----------------------------------------------------------------------------- params
def check_params(P: Params, fields: bool = True) -> list[str]:
    """Problems in params.sft (unknown model, LoRA or SFTConfig keys, inconsistent options).

    fields=False skips the LoRA and SFTConfig keys, whose check imports PEFT and TRL.
    """
    errs = []
    for name in P.sft.models:
        if name not in registry.REGISTRY:
            errs.append(f"sft.models: unknown model {name!r}; known models: {registry.NAMES}")
    if fields:
        from peft import LoraConfig
        from trl import SFTConfig

        for section, cls in [("lora", LoraConfig), ("config", SFTConfig)]:
            known = {f.name for f in dataclasses.fields(cls)}
            for key in getattr(P.sft, section):
                if key not in known:
                    errs.append(
                        f"sft.{section}.{key}: not a field of {cls.__module__}.{cls.__name__}"
                    )
    for key in sorted(OWNED_KEYS & set(P.sft.config)):
        errs.append(
            f"sft.config.{key}: set by mi_llm from the run (seed, device, runs/<name>/03_sft)"
        )
    cfg = P.sft.config
    if (
        cfg.get("padding_free")
        and not cfg.get("packing")
        and cfg.get("max_length", 1024) is not None
    ):
        errs.append("sft.config.padding_free: needs max_length: null unless packing: true")
    if P.sft.min_response_chars < 0 or (
        P.sft.context_turns is not None and P.sft.context_turns < 1
    ):
        errs.append("sft: min_response_chars must be >= 0 and context_turns >= 1 or null")
    return errs


def _require_valid(P: Params, fields: bool = True) -> None:
    errs = check_params(P, fields)
    if errs:
        raise ValueError("invalid sft params:\n  " + "\n  ".join(errs))


def lora_config(P: Params, spec: registry.ModelSpec):
    """peft.LoraConfig from params.sft.lora; target modules default to the registry entry's."""
    from peft import LoraConfig

    kw = {"target_modules": spec.lora_target_modules, "task_type": "CAUSAL_LM", **P.sft.lora}
    return LoraConfig(**kw)


def sft_config(P: Params, spec: registry.ModelSpec, output_dir: Path, **overrides):
    """trl.SFTConfig: TRL defaults < the project's configuration < params.sft.config < overrides."""
    from trl import SFTConfig

    kw = {**PROJECT_DEFAULTS, **P.sft.config, **overrides}
    if spec.padding_free and "packing" not in kw and "padding_free" not in kw:
        # padding-free rows: best-fit-decreasing packing keeps max_length and wastes no pad tokens
        kw.update(packing=True, packing_strategy="bfd")
    if kw.get("gradient_checkpointing") is False:  # TRL's default is on
        kw.pop("gradient_checkpointing_kwargs", None)
    if _on_cpu(P) and kw.get("bf16", True) and not devices.cpu_bf16():
        # bf16 autocast on a CPU without native bf16 emulates every matmul (slower than fp32);
        # registry.load gives fp32 weights there, so training runs in fp32
        kw["bf16"] = False
    return SFTConfig(output_dir=str(output_dir), seed=P.seed, use_cpu=P.device == "cpu", **kw)


def _on_cpu(P: Params) -> bool:
    import torch

    return P.device == "cpu" or not torch.cuda.is_available()


# ----------------------------------------------------------------------------- data
def light_fingerprint(tok) -> None:
    """Let datasets fingerprint this tokenizer's class without its Python copies of the vocabulary.

    TRL tokenizes the training set with `Dataset.map(..., fn_kwargs={"processing_class": tok})`, and
    datasets fingerprints a map by pickling its arguments in Python. Transformers' tokenizers keep
    their vocabulary and merges as Python objects beside the backend tokenizer (Gemma 3: 262k
    entries and 515k merge pairs), which are slow to pickle. The backend tokenizer pickles as
    its JSON, which holds the same vocabulary and merges, so the fingerprint still changes with them.
    """
    try:
        from datasets.utils import _dill
    except ImportError:  # another datasets layout: its own (slower) fingerprint applies
        return
    save = getattr(_dill, "_save_transformersPreTrainedTokenizerBase", None)
    if save is None or getattr(tok, "_tokenizer", None) is None:
        return

    def save_light(pickler, obj):
        light = object.__new__(type(obj))
        light.__dict__ = {k: v for k, v in obj.__dict__.items() if k not in ("_vocab", "_merges")}
        save(pickler, light)

    _dill.pklregister(type(tok))(save_light)


def read_train(P: Params) -> list[dict]:
    """The MI corpus training split of stage 02 (records with "messages"), validated."""
    f = P.run_dir / TRAIN_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f}: no training split; run stage 02 (02_mi_transcription) first")
    records = read_split(f)
    if not records:
        raise DataError(f, None, "messages", "the training split is empty")
    return records


def samples(
    messages: list[dict], min_response_chars: int = 0, context_turns: int | None = None
) -> list[dict]:
    """Training samples from one dialogue: the whole dialogue, or one per long-enough reply.

    With no filter and no window the dialogue is one {"messages"} sample (every reply trained).
    Otherwise every assistant reply of >= min_response_chars characters becomes a
    {"prompt", "completion"} sample whose prompt is the system message plus at most
    context_turns preceding turns, starting at a user turn; only the completion is trained.
    """
    if not min_response_chars and context_turns is None:
        return [{"messages": messages}]
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    out = []
    for i, m in enumerate(turns):
        if m["role"] != "assistant" or len(m["content"].strip()) < min_response_chars:
            continue
        ctx = turns[0 if context_turns is None else max(0, i - context_turns) : i]
        while ctx and ctx[0]["role"] != "user":  # chat templates expect the client to speak first
            ctx = ctx[1:]
        if ctx:  # a reply with no client turn before it answers nothing
            out.append({"prompt": system + ctx, "completion": [m]})
    return out


def fit_context(rows: list[dict], tok, max_length: int | None) -> list[dict]:
    """Drop the oldest exchanges of each prompt until prompt + completion fit max_length tokens.

    TRL truncates from the end, which would cut off the very reply a window exists to train.
    """
    if not max_length:
        return rows
    out = []
    for r in rows:
        if "prompt" not in r:
            out.append(r)
            continue
        system = r["prompt"][:1] if r["prompt"][0]["role"] == "system" else []
        ctx = r["prompt"][len(system) :]
        while len(ctx) > 1 and _n_tokens(tok, system + ctx + r["completion"]) > max_length:
            ctx = ctx[
                2:
            ]  # one client + counselor exchange: the window still starts on a client turn
        out.append({"prompt": system + ctx, "completion": r["completion"]})
    return out


def _n_tokens(tok, messages) -> int:
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def build_dataset(P: Params, tok=None):
    """datasets.Dataset of SFT samples from the stage-02 training split (windows fit max_length)."""
    from datasets import Dataset

    rows = []
    for rec in read_train(P):
        rows += samples(rec["messages"], P.sft.min_response_chars, P.sft.context_turns)
    if tok is not None:
        rows = fit_context(rows, tok, P.sft.config.get("max_length", 1024))
    if not rows:
        raise ValueError(
            f"{P.run_dir / TRAIN_FILE}: no sample left after min_response_chars="
            f"{P.sft.min_response_chars}, context_turns={P.sft.context_turns}"
        )
    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------- logging
def _log_callback(log_file: Path, start_step: int):
    """A TrainerCallback writing train_log.csv (step, loss, learning_rate, tokens_per_s)."""
    from transformers import TrainerCallback

    class TrainLog(TrainerCallback):
        def __init__(self):
            self.rows = _read_log(log_file, upto=start_step)  # keep the rows of a resumed run
            self.t, self.tokens = None, None

        def on_train_begin(self, args, state, control, **kw):
            self.t, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.perf_counter()
            rate = (state.num_input_tokens_seen - self.tokens) / max(now - self.t, 1e-9)
            self.t, self.tokens = now, state.num_input_tokens_seen
            self.rows.append(
                {
                    "step": state.global_step,
                    "loss": logs["loss"],
                    "learning_rate": logs.get("learning_rate"),
                    "tokens_per_s": round(rate, 1),
                }
            )
            _write_log(log_file, self.rows)

    return TrainLog()


def _read_log(f: Path, upto: int) -> list[dict]:
    if not f.exists() or upto == 0:
        return []
    with open(f, encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if int(r["step"]) <= upto]


def _write_log(f: Path, rows: list[dict]) -> None:
    tmp = f.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(f)


def peak_memory_mb() -> tuple[float, str]:
    """Peak memory of this process: CUDA allocated when on a GPU, else the peak resident set."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"  # KiB on Linux


# ----------------------------------------------------------------------------- training
def last_checkpoint(output_dir: Path) -> str | None:
    """The checkpoint-N folder under output_dir with the largest N (None when there is none).

    transformers.trainer_utils.get_last_checkpoint's rule, without importing the trainer (slow to
    import, for a re-run that finds the training finished).
    """
    found = [
        (int(m.group(1)), str(d))
        for d in (Path(output_dir).iterdir() if Path(output_dir).is_dir() else ())
        if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name))
    ]
    return max(found)[1] if found else None


def _clear(out: Path) -> None:
    """Remove a stale run's checkpoints, adapter, merged model, log and report."""
    import shutil

    for name in ("checkpoints", ADAPTER_DIR, "merged"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (LOG_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)


def _write_identity(ckpt_dir: Path, ident: dict) -> None:
    from mi_llm.runs import write_atomic

    write_atomic(Path(ckpt_dir) / IDENTITY_FILE, json.dumps(ident, indent=2))


def train(P: Params, model_name: str, progress: bool = True, model_path=None, callbacks=()) -> dict:
    """LoRA-fine-tune one registry model on the MI corpus; resumes; returns report.json's dict."""
    from mi_llm.runs import set_seed

    _require_valid(P, fields=False)  # the LoRA and SFTConfig keys: once TRL is needed (below)
    spec = registry.get(model_name)
    out = P.stage_dir(STAGE) / model_name
    ckpt_dir = out / "checkpoints"
    read_train(P)  # fail on a missing or bad split before loading a model
    if model_path is None and model_name in P.model_paths:
        model_path = params_path(P.model_paths[model_name])
    ident = identity(P, model_name, model_path)
    resume = last_checkpoint(ckpt_dir)
    stale = _stale(ckpt_dir, ident) if resume else None
    done = out / REPORT_FILE
    if resume and not stale and done.exists():  # a finished run (e.g. after `accelerate launch`)
        report = json.loads(done.read_text(encoding="utf-8"))
        steps = int(Path(resume).name.split("-")[-1])
        if (
            report["steps"] == steps == P.sft.config.get("max_steps", steps)
            and report.get("identity") == ident
        ):
            return report
    # a finished run with these very params (above) passed this check, which imports TRL and PEFT
    # (slow); it comes before anything is cleared
    _require_valid(P)
    if stale:  # checkpoints of other data or params: never resumed, never returned as this run
        print(f"[mi_llm] {out}: retraining from step 0: {stale}", file=sys.stderr, flush=True)
        _clear(out)
        resume = None
    start_step = int(Path(resume).name.split("-")[-1]) if resume else 0
    _write_identity(ckpt_dir, ident)
    from mi_llm.train.loss import LossPositionsSFTTrainer

    dtype = devices.compute_dtype(
        spec.dtype, "cpu" if _on_cpu(P) else "cuda"
    )  # fp32 on a CPU without bf16
    model, tok = registry.load(model_name, device="cpu", dtype=dtype, path=model_path)
    dataset = build_dataset(P, tok)
    light_fingerprint(tok)
    args = sft_config(P, spec, ckpt_dir, disable_tqdm=not progress)
    log = _log_callback(out / LOG_FILE, start_step)
    set_seed(P.seed)  # the LoRA weights are drawn in the constructor, before the Trainer seeds
    trainer = LossPositionsSFTTrainer(  # TRL's SFTTrainer, output layer at the label positions only
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=lora_config(P, spec),
        callbacks=[log, *callbacks],
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - t0
    if trainer.state.global_step < args.max_steps and trainer.control.should_training_stop:
        return {
            "stopped_at": trainer.state.global_step
        }  # interrupted on purpose (tests): no artifacts
    # every rank takes part: under ZeRO-3 / FSDP the adapter is gathered from the shards
    trainer.save_model(
        str(out / ADAPTER_DIR)
    )  # PEFT adapter + tokenizer with the training template
    if not trainer.is_world_process_zero():
        return {}
    # the adapter's tokenizer then loads without a second parse of tokenizer.json (tokenizer_files)
    tokenizer_files.write_added_tokens(tok, out / ADAPTER_DIR)
    return _finish(P, spec, trainer, out, log.rows, wall, result, resume, len(dataset), ident)


def _finish(P, spec, trainer, out: Path, rows, wall, result, resume, n_samples, ident) -> dict:
    """Save the optional merged model and write report.json (main process only)."""
    if P.sft.merge:  # single-process runs: a sharded model cannot be merged in place
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer_files.save_tokenizer(trainer.processing_class, out / "merged")
    from mi_llm.runs import write_atomic

    mem, mem_kind = peak_memory_mb()
    losses = [float(r["loss"]) for r in rows]
    tokens = trainer.state.num_input_tokens_seen
    report = {
        "model": spec.name,
        "hub_id": spec.hub_id,
        "n_samples": n_samples,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_tokens": int(tokens),
        "tokens_per_s": round(
            result.metrics.get("train_tokens_per_second", 0.0) or tokens / wall, 1
        ),
        "peak_memory_mb": round(mem, 1),
        "peak_memory_kind": mem_kind,
        "wall_s": round(wall, 1),
        "resumed_from": Path(resume).name if resume else None,
        "packing": trainer.args.packing,
        "padding_free": trainer.padding_free,
        "identity": ident,
    }
    write_atomic(out / REPORT_FILE, json.dumps(report, indent=2))
    return report


def artifacts(P: Params, names=None) -> list[Path]:
    """The stage's artifacts per model: adapter/, train_log.csv, report.json (and merged/)."""
    out = []
    for name in names or P.sft.models:
        d = P.run_dir / STAGE / name
        out += [d / ADAPTER_DIR, d / LOG_FILE, d / REPORT_FILE] + (
            [d / "merged"] if P.sft.merge else []
        )
    return out


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    """`python -m mi_llm.train.sft params/x.yaml [--model NAME ...]` (also under `accelerate launch`)."""
    from mi_llm import params as params_mod

    ap = argparse.ArgumentParser(prog="python -m mi_llm.train.sft", description="stage 03 LoRA SFT")
    ap.add_argument("params", help="params/<name>.yaml")
    ap.add_argument("--model", nargs="+", help="registry names (default: params sft.models)")
    a = ap.parse_args(argv)
    P = params_mod.load(a.params)
    for name in a.model or P.sft.models:
        report = train(P, name)
        if report:
            print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
