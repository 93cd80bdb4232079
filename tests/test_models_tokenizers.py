"""The paper's three real tokenizers: `registry.load_tokenizer` on each published hub snapshot gives
the model's own ids for held-out conversations.

References, computed without our code: GLM-4 and Llama 3 render the model's official template
(`chat_template.jinja` of the snapshot) with jinja2 and tokenize it with the `tokenizers` library on
the real tokenizer.json; Baichuan2 lays a conversation out as its `build_chat_input` and fine-tune
script do (system ids, 195 + user ids, 196 + reply ids + 2) with sentencepiece's own ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random

import pytest

from mi_llm.data import corpora
from mi_llm.models import registry, snapshots
from mi_llm.params import ROOT

NAMES = ["baichuan2-7b-chat", "glm-4-9b-chat", "llama3-8b-chinese-chat-v2"]
# sha256 of the published files (data/tokenizers/PROVENANCE.md)
SHA256 = {
    "baichuan2-7b-chat": (
        "tokenizer.model",
        "79452955be6b419a65984273a9f08af86042e1c2a75ee3ba989cbf620a133cc2",
    ),
    "glm-4-9b-chat": (
        "tokenizer.json",
        "8a7269d6daa6328de533def0082ff9d3a825bb89036cbcc665c324f941f67fbf",
    ),
    "llama3-8b-chinese-chat-v2": (
        "tokenizer.json",
        "e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7",
    ),
}
VOCAB = {
    "baichuan2-7b-chat": 125_696,
    "glm-4-9b-chat": 151_343,
    "llama3-8b-chinese-chat-v2": 128_256,
}
SYSTEMS = [
    "你是一位运用动机式访谈的心理咨询师。",
    "You are an MI counsellor.",
    "  请简短回答：1+1=？  ",
]
NOISE = [
    "",
    " ",
    "  ",
    "\n",
    "！",
    "...",
    "。。。",
    "123",
    "😀",
    "\t",
    "《书》",
    " ok?",
    "<br>",
    "％",
]


def _dialogues(n_per_corpus: int = 12):
    """Real dialogues of the shipped samples (Chinese counselling, English MI sessions)."""
    out = []
    for corpus, path in [
        ("cpsycound", "data/CPsyCounD/Data"),
        ("smilechat", "data/SmileChat/data"),
        ("annomi", "data/AnnoMI"),
    ]:
        out += corpora.load(corpus, ROOT / path, limit=n_per_corpus)
    return out


def conversations(seed: int = 0, n_turns: int = 8):
    """System + alternating user/assistant turns from real dialogues, with whitespace and
    punctuation noise at the edges of some turns (the templates trim or keep it)."""
    rng = random.Random(seed)
    convs = []
    for d in _dialogues():
        turns = [t for t in d.turns if t.text.strip()][:n_turns]
        msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        for i, t in enumerate(turns):
            text = t.text if rng.random() < 0.6 else rng.choice(NOISE) + t.text + rng.choice(NOISE)
            msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        if len(msgs) >= 3:
            convs.append(msgs if msgs[-1]["role"] == "assistant" else msgs[:-1])
    return convs


CONVS = conversations()


@pytest.fixture(scope="module")
def folders():
    return {name: snapshots.tokenizer_folder(name) for name in NAMES}


@pytest.fixture(scope="module")
def toks(folders):
    return {name: registry.load_tokenizer(name, folders[name]) for name in NAMES}


def test_enough_held_out_conversations():
    assert len(CONVS) >= 30
    text = "".join(m["content"] for c in CONVS for m in c)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text) and "the" in text  # Chinese and Latin


@pytest.mark.parametrize("name", NAMES)
def test_shipped_files_are_the_published_ones(folders, name):
    file, sha = SHA256[name]
    assert hashlib.sha256((folders[name] / file).read_bytes()).hexdigest() == sha


@pytest.mark.parametrize("name", NAMES)
def test_vocab_size_and_eot_among_eos_ids(folders, toks, name):
    tok, spec = toks[name], registry.get(name)
    assert len(tok) == VOCAB[name]  # nothing added: every template token is already in the vocab
    cfg = json.loads((folders[name] / "config.json").read_text())
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    assert tok.convert_tokens_to_ids(spec.eot_token) in eos
    assert tok.pad_token != spec.eot_token


@functools.cache
def _official_parts(folder):
    import jinja2
    from tokenizers import Tokenizer

    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True
    )  # as transformers renders templates
    template = env.from_string((folder / "chat_template.jinja").read_text(encoding="utf-8"))
    return template, Tokenizer.from_file(str(folder / "tokenizer.json"))


def _official(folder, conv, add_generation_prompt):
    """The official template rendered with jinja2, tokenized by `tokenizers` on tokenizer.json."""
    template, tk = _official_parts(folder)
    text = template.render(messages=conv, add_generation_prompt=add_generation_prompt)
    return tk.encode(text, add_special_tokens=False).ids


@functools.cache
def _sentencepiece(folder):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def _baichuan(folder, conv, add_generation_prompt):
    """build_chat_input's layout with sentencepiece's ids, </s> (2) after each reply as in training."""
    sp = _sentencepiece(folder)
    ids = sp.encode(conv[0]["content"]) if conv[0]["role"] == "system" else []
    for m in conv[1:] if conv[0]["role"] == "system" else conv:
        if m["role"] == "user":
            ids += [195] + sp.encode(m["content"])
        else:
            ids += [196] + sp.encode(m["content"]) + [2]
    return ids + [196] if add_generation_prompt else ids


def reference(name, folder, conv, add_generation_prompt=False):
    """The model's own ids for a conversation (+ the registry's end-of-turn token where the official
    template leaves a final reply open: GLM-4 stops a reply by writing <|user|>)."""
    if name == "baichuan2-7b-chat":
        return _baichuan(folder, conv, add_generation_prompt)
    ids = _official(folder, conv, add_generation_prompt)
    if name == "glm-4-9b-chat" and conv[-1]["role"] == "assistant":
        ids += [151336]  # <|user|>
    return ids


@pytest.mark.parametrize("name", NAMES)
def test_training_ids_equal_the_models_own(folders, toks, name):
    tok = toks[name]
    for conv in CONVS:
        got = tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        assert got == reference(name, folders[name], conv), tok.decode(got)[:200]


@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_ids_equal_the_models_own(folders, toks, name):
    tok = toks[name]
    for conv in CONVS:
        prompt = conv[:-1]  # ends on a user turn
        got = tok.apply_chat_template(
            prompt, tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert got == reference(name, folders[name], prompt, add_generation_prompt=True)


def test_llama3_without_system_turn_gets_the_default_system_prompt(folders, toks):
    conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    name = "llama3-8b-chinese-chat-v2"
    got = toks[name].apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    assert got == reference(name, folders[name], conv)


def test_baichuan_markers_and_chinese_survive_conversion(toks):
    tok = toks["baichuan2-7b-chat"]
    ids = tok(
        "你是咨询师。<reserved_106>我最近睡不好。<reserved_107>听起来你很困扰。</s>",
        add_special_tokens=False,
    )["input_ids"]
    assert len(ids) > 10 and ids.count(195) == 1 and ids.count(196) == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "你是咨询师。我最近睡不好。听起来你很困扰。"


def test_raw_baichuan_folder_never_asks_for_remote_code(folders, toks, tmp_path):
    """The snapshot's tokenizer_config names remote code (auto_map); loading must not use it."""
    assert "auto_map" in json.loads(
        (folders["baichuan2-7b-chat"] / "tokenizer_config.json").read_text()
    )
    tok = toks["baichuan2-7b-chat"]  # loaded from that folder
    tok.save_pretrained(tmp_path)  # the converted tokenizer reloads as tokenizer.json
    again = registry.load_tokenizer("baichuan2-7b-chat", tmp_path)
    conv = CONVS[0]
    assert (
        again.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        == tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    )


def test_folder_without_tokenizer_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        registry.load_tokenizer("baichuan2-7b-chat", tmp_path)
    with pytest.raises(KeyError, match="no shipped tokenizer files"):
        snapshots.shipped_folder("gemma3-270m")
