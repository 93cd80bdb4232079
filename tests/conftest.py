"""Shared fixtures and helpers: the embedded model, tiny random-weight models, chat run folders."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from mi_llm import params
from mi_llm.data import corpora, transcribe
from mi_llm.data.schema import Dialogue
from mi_llm.eval import generation
from mi_llm.models.tokenizer_files import save_tokenizer
from mi_llm.params import ROOT
from mi_llm.study import dryrun
from mi_llm.train import sft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:
    _HAS_CUDA = False

# GPU tests live in files ending _gpu.py; without CUDA they are not even collected.
collect_ignore_glob = [] if _HAS_CUDA else ["*_gpu.py"]


def pytest_collection_modifyitems(config, items):
    """Mark GPU test files `gpu` so `-m 'not gpu'` deselects them anywhere."""
    for item in items:
        if item.path.name.endswith("_gpu.py"):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The cached bf16 folder of the embedded Gemma 3 270M (converted on first use)."""
    from mi_llm.models import embedded

    return embedded.model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    """A tiny random-weight Gemma3ForCausalLM (2 layers, hidden 64) with the Gemma tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out = tmp_path_factory.mktemp("tiny-gemma3")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    model.generation_config.eos_token_id = [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    model.save_pretrained(out)
    save_tokenizer(tok, out)  # loads without parsing tokenizer.json twice
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model with non-zero B (merging it changes the weights)."""
    from peft import LoraConfig, get_peft_model

    from mi_llm.models import registry

    model, _ = registry.load("gemma3-270m", "cpu", path=tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- chat runs
CHAT_MODEL = "gemma3-270m"  # the model of the chat tests' run folders


def make_run(root, tiny_model_dir, adapter=None, system="你是一名动机式访谈咨询师。"):
    """A run folder as the study leaves it: provenance params, the 03 adapter, 02's test split."""
    run = root / "runs" / "chatrun"
    run.mkdir(parents=True)
    params = {
        "name": "chatrun",
        "model_paths": {CHAT_MODEL: str(tiny_model_dir)},
        "evaluation": {"models": [CHAT_MODEL]},
    }
    (run / "provenance.json").write_text(json.dumps({"params": params}), encoding="utf-8")
    if adapter is not None:
        dst = run / "03_sft" / CHAT_MODEL / "adapter"
        dst.mkdir(parents=True)
        for f in adapter.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    test = run / "02_mi_transcription" / "test.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text(
        json.dumps(
            {
                "id": "t0",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "你好"},
                ],
            },
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    return run


def counselor(req: dict) -> str:
    """The stand-in model: echoes how many messages it got and whether the system prompt came first."""
    first = req["messages"][0]
    return f"听起来你很在意这件事。[{len(req['messages'])} {first['role']}]"


# ----------------------------------------------------------------------------- tiny tokenizers
def tiny_tokenizer(name, texts=None, vocab_size=400):
    """A small byte-level BPE tokenizer (no download) with the model's special tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad = SPECIALS[name]
    tk = Tokenizer(BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts or [m["content"] for m in CONV] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad)


# ----------------------------------------------------------------------------- SFT runs
DATA = params.ROOT / "data/PsyDTCorpus/PsyDTCorpus_sample.json"


def make_params(**sft_section):
    """Params of a tiny CPU run; sft_section overrides the sft section."""
    base = {
        "models": ["llama3-8b-chinese-chat-v2"],
        "context_turns": 4,
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
        "config": {
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "save_steps": 2,
            "max_length": 128,
            "learning_rate": 5e-3,
            "logging_steps": 1,
        },
    }
    return params.from_dict({"name": "t", "device": "cpu", "sft": {**base, **sft_section}})


@pytest.fixture
def run_root(tmp_path, monkeypatch):
    """A project root in tmp with runs/t/02_mi_transcription/train.jsonl from the PsyDTCorpus sample."""
    dryrun.write_sample_train(tmp_path / "runs/t" / sft.TRAIN_FILE)  # reads the real ROOT's sample
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama-3-shaped model with a small BPE tokenizer (fast CPU training)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = [
        m["content"] for d in json.loads(DATA.read_text(encoding="utf-8")) for m in d["messages"]
    ]
    tok = tiny_tokenizer("llama3-8b-chinese-chat-v2", texts=text, vocab_size=1000)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    save_tokenizer(tok, d)
    return d


# ----------------------------------------------------------------------------- a run folder of artifacts (figures, report)
def write_artifacts(run):
    """A small but complete run: stages 01-04's artifacts in their real formats (04's tables are
    computed by mi_llm.eval.metrics / mi_llm.eval.therapy / mi_llm.eval.miti from hand-made generations)."""
    from mi_llm.data import quality
    from mi_llm.eval import forecast, forecast_eval, metrics, miti, therapy

    q = run / "01_corpus_quality"
    q.mkdir(parents=True)
    rows, recs = [], []
    for c, judged in JUDGED.items():
        recs += [
            {
                "corpus": c,
                "dialogue_id": f"{c}-{i}",
                "ok": s is not None,
                "scores": dict(zip(CRIT, s)) if s else None,
                "total": sum(s) if s else None,
            }
            for i, s in enumerate(judged)
        ]
        ok = [s for s in judged if s]
        means = dict(zip(CRIT, [sum(x[k] for x in ok) / len(ok) for k in range(4)]))
        tot = sum(means.values())
        rows.append(
            {
                "corpus": c,
                "n_dialogues": 10,
                "mean_turns": 12.0,
                "mean_counselor_chars": 30.0,
                "mean_client_chars": 20.0,
                "question_rate": 0.3,
                "duplicate_rate": 0.0,
                **means,
                "total": tot,
                "total_ci_low": tot - 1,
                "total_ci_high": min(tot + 1, 9),
            }
        )
    df = pd.DataFrame(rows).sort_values("total", ascending=False)
    df["rank"], df["selected"] = range(1, len(df) + 1), [True, True, False, False]
    df[quality.FIXTURE_COLUMN] = False
    df.to_csv(q / "quality.csv", index=False)  # quality.QUALITY_COLUMNS, then the fixture flag
    (q / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "02_mi_transcription").mkdir()
    (run / "02_mi_transcription/report.json").write_text(
        json.dumps(
            {
                "unit": "turn",
                "attempted": 10,
                "valid": 7,
                "failed_by_reason": {"too short": 2, "speakers do not alternate": 1},
                "by_corpus": {"cpsycound": {"attempted": 5, "valid": 4}},
            }
        )
    )
    for m, l0 in [("gemma3-270m", 4.5), ("tiny", 6.0)]:
        (run / "03_sft" / m).mkdir(parents=True)
        log = {
            "step": range(1, 6),
            "loss": [l0 * 0.8**i for i in range(5)],
            "learning_rate": 2e-4,
            "tokens_per_s": 50.0,
        }
        pd.DataFrame(log).to_csv(run / "03_sft" / m / "train_log.csv", index=False)
    e = run / "04_evaluation"
    e.mkdir()
    gens = sample_generations()
    metrics.score(gens, bootstrap=200).to_csv(e / "metrics.csv", index=False)
    therapy.therapy_metrics(gens).to_csv(e / "therapy_metrics.csv", index=False)
    # miti_summary.csv from per-dialogue counts by mi_llm.eval.miti_summary (both definitions)
    from mi_llm.eval import miti_summary

    def dialogues(model, variant, counts, globals_=None):
        return [
            {
                "model": model,
                "variant": variant,
                "dialogue_id": str(i),
                "n_replies": sum(c.values()),
                "n_utterances": sum(c.values()),
                "n_coded": sum(c.values()),
                **{
                    k: c.get(k, 0 if model != "annomi" or k in ("Q", "SR", "CR", "GI") else np.nan)
                    for k in miti.CODES
                },
                **{g: (globals_ or {}).get(g, np.nan) for g in miti.GLOBALS},
            }
            for i, c in enumerate(counts)
        ]

    glob = {"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 3}
    gen = dialogues(
        "gemma3-270m", "finetuned", [{"Q": 2, "SR": 2, "CR": 1}, {"Q": 2, "SR": 1}], glob
    )
    ref = dialogues(
        "annomi",
        "high",
        [{"Q": 1, "SR": 1, "CR": 1, "GI": 1, "NONE": 1}, {"Q": 1, "SR": 1, "CR": 1, "NONE": 2}],
    )
    summary = pd.concat(
        [
            miti_summary.group_summary(pd.DataFrame(gen), "generated", 200),
            miti_summary.group_summary(pd.DataFrame(ref), "reference", 200),
        ]
    )
    pd.DataFrame(summary).to_csv(e / "miti_summary.csv", index=False)
    units = [
        {
            "model": "gemma3-270m",
            "variant": v,
            "dialogue_id": "d0",
            "topic": "婚恋",
            "utterances": [{"turn": i, "round": i, "codes": c} for i, c in enumerate(codes)],
        }
        for v, codes in [
            ("base", [["Q"], ["Q"], ["GI"], None]),
            ("finetuned", [["SR"], ["CR"], ["Q"], ["Q"], []]),
        ]
    ]
    units.append(  # a coder-check record: not real MI, not drawn
        {"model": "annomi", "variant": "high", "check": "annomi", "utterances": [{"codes": ["CR"]}]}
    )
    (e / "miti_codes.jsonl").write_text(
        "".join(json.dumps(u, ensure_ascii=False) + "\n" for u in units)
    )
    rng = np.random.default_rng(
        0
    )  # forecast_eval.evaluate's table: forecast_eval.score per predictor
    y = list(rng.choice(forecast.TAGS, 60))
    groups = [f"rec{i // 6}" for i in range(60)]
    preds = {
        "majority": ("baseline", [y[0]] * 60),
        "previous_behaviour": ("baseline", list(rng.permutation(y))),
        "forecaster_universal": ("forecaster", y[:40] + [y[0]] * 20),
    }
    rows = [
        {
            "model": m,
            "role": role,
            "features": "none" if role == "baseline" else "language-independent",
            "n_train": 900,
            "n_train_sessions": 40,
            "n_train_recordings": 30,
            "n_test_transcripts": 10,
            "reference": "previous_behaviour",
            **forecast_eval.score(y, p, groups, 100, 0, reference=preds["previous_behaviour"][1]),
        }
        for m, (role, p) in preds.items()
    ]
    df = pd.DataFrame(rows)
    df["beats_baselines"] = forecast_eval.beats_baselines(df)
    forecast_eval.write_table(df, e)
    return run


# ----------------------------------------------------------------------------- transcription
def mi_model(req: dict) -> str:
    """Answers like a model that follows the prompts: one MI reply (turn) or labelled lines (dialogue)."""
    last = req["messages"][-1]["content"]
    if "原回复：" in last:
        src = re.search(r"原回复：(.*)", last).group(1)
        return f"听起来这件事让你很在意，{src[:12]}……你愿意多说说吗？\n来访者接着说：嗯。"
    lines = re.search(r"原始对话：\n(.*?)\n\n", last, re.DOTALL).group(1).splitlines()
    return "\n".join(
        x if x.startswith("来访者") else "咨询师：听起来你很在意这件事，" + x[4:] for x in lines
    )


def smoke_params(**tp) -> params.Params:
    """The smoke params as a remote-endpoint transcription test needs them; untagged unless
    tag_behaviour is given."""
    P = params.load(ROOT / "params/smoke.yaml")
    version = tp.get("prompt_version", P.transcription.prompt_version)
    tp.setdefault("tag_behaviour", "tagged" in version)  # the smoke recipe's tags follow its prompt
    llm_p = dataclasses.replace(
        P.llm, provider="remote", request_timeout=10, backoff_base=0.01, backoff_max=0.05
    )
    return dataclasses.replace(
        P, llm=llm_p, transcription=dataclasses.replace(P.transcription, **tp)
    )


def sample_dialogues(n=3) -> list[Dialogue]:
    P = params.load(ROOT / "params/smoke.yaml")
    out = []
    for name in ("cpsycound", "psydtcorpus"):
        ds = corpora.load(name, params.path(P.corpora.sources[name]))[:n]
        out += [transcribe.trim(d, 4) for d in ds]
    return out


# ----------------------------------------------------------------------------- tiny tokenizers: a conversation and the tokens
CONV = [
    {"role": "system", "content": "你是咨询师。"},
    {"role": "user", "content": "我最近睡不好。"},
    {"role": "assistant", "content": "听起来你很困扰。"},
    {"role": "user", "content": "是的，压力很大。"},
    {"role": "assistant", "content": "你愿意多说说吗？"},
]


SPECIALS = {  # (special tokens, bos, eos, pad) of the tiny tokenizers
    "llama3-8b-chinese-chat-v2": (
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
    ),
    "glm-4-9b-chat": (
        ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"],
        None,
        "<|endoftext|>",
        "<|endoftext|>",
    ),
    "baichuan2-7b-chat": (
        ["<unk>", "<s>", "</s>", "<reserved_106>", "<reserved_107>"],
        "<s>",
        "</s>",
        "<unk>",
    ),
}


# ----------------------------------------------------------------------------- artifacts: judged rubric scores and generations
CRIT = ["comprehensiveness", "professionalism", "authenticity", "safety"]


JUDGED = {  # corpus -> rubric scores of its judged dialogues (None: the judge's answer failed)
    "cpsycound": [[2, 3, 3, 1], [1, 2, 3, 1]],
    "psydtcorpus": [[2, 2, 2, 1], [1, 2, 2, 1], None],
    "smilechat": [[1, 2, 2, 1], [1, 1, 2, 0]],
    "cpsycoune": [[1, 1, 2, 1], [0, 1, 1, 1]],
}


def sample_generations() -> list[dict]:
    """Stage 04's generation records for REPLIES, base and finetuned (hand-made, real format)."""
    return [
        {
            "model": "gemma3-270m",
            "variant": v,
            "dialogue_id": f"d-{topic}",
            "round": r,
            "topic": topic,
            "messages": [{"role": "user", "content": "我最近很烦。"}],
            "reference": ref,
            "reply": base if v == "base" else ft,
        }
        for topic, r, ref, base, ft in REPLIES
        for v in ("base", "finetuned")
    ]


# ----------------------------------------------------------------------------- artifacts: stage 04's replies
REPLIES = [  # (topic, round, reference, base reply, finetuned reply): stage 04's generations
    ("婚恋", 0, "听起来你很在意这段关系。", "你应该和他谈谈吧？你试过吗？", "你很在意这段关系。"),
    ("婚恋", 1, "你希望他更理解你。", "为什么不分手？", "你希望被理解。"),
    ("家庭", 0, "和父母的争吵让你很累。", "你父母怎么说？", "争吵让你很累，是吗？"),
    ("家庭", 1, "你想找到一种平静的沟通方式。", "多沟通就好了。", "你想平静地沟通。"),
]


# ----------------------------------------------------------------------------- MITI: stage 04's generations
@pytest.fixture(scope="module")
def generations(tmp_path_factory):
    """generations.jsonl in stage 04's format from two real CPsyCounE dialogues (3 rounds each)."""
    ds = corpora.load("cpsycoune", ROOT / "data" / "CPsyCounE")[:2]
    records = [{"id": d.id, "topic": d.meta.get("topic"), "messages": d.to_messages()} for d in ds]
    rounds = generation.rounds(records, max_rounds=3, context_turns=4)
    out = tmp_path_factory.mktemp("gen") / "generations.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for variant in ("base", "finetuned"):
            for r in rounds:
                # the fine-tuned "model" adds a question to every reply: its Q count must show it
                reply = r["reference"] + ("你愿意多说一些吗？" if variant == "finetuned" else "")
                f.write(
                    json.dumps(
                        {"model": "tiny", "variant": variant, **r, "reply": reply},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return out


def miti_params(tmp_path, **miti_cfg):
    """The smoke params with a private answer cache and the given evaluation.miti settings."""
    p = params.load("params/smoke.yaml")
    p.llm.cache_path = str(tmp_path / "cache.sqlite")
    p.llm.max_retries = 0
    p.evaluation.miti = dataclasses.replace(p.evaluation.miti, max_utterances=None, **miti_cfg)
    return p
