"""The model registry: one declarative entry per model that the study fine-tunes or evaluates.

An entry says where the weights come from (hub id + revision, or the embedded folder), which chat
template to train with (every template wraps the assistant's reply *and its end-of-turn token* in
{% generation %} markers, so `assistant_only_loss` trains the model to answer and to stop), the
LoRA target modules, the dtype and any conversion the checkpoint needs. Add a model by adding one
entry to REGISTRY.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from mi_llm.models.devices import compute_dtype

# ----------------------------------------------------------------------------- chat templates
# Llama3-8B-Chinese-Chat-v2 (its tokenizer_config's template, Meta's Llama 3 layout): every turn's text
# is trimmed and a conversation without a system turn gets the model's default system prompt:
#   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>
#   <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>
LLAMA3_CHINESE_SYSTEM = (
    "You are Llama3-8B-Chinese-Chat-v2, finetuned from Llama3-8B-Instruct on Chinese-English dataset "
    "using the ORPO algorithm. You are a helpful assistant."
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + LLAMA3_CHINESE_SYSTEM + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system | trim + '<|eot_id|>' }}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'assistant' -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- generation -%}{{ m['content'] | trim + '<|eot_id|>' }}{%- endgeneration -%}"
    "{%- else -%}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

# Gemma 3: <bos><start_of_turn>user\n(S\n\n)U<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n
GEMMA3_TEMPLATE = files("trl").joinpath("chat_templates/gemma3_training.jinja").read_text()

# GLM-4-9B-Chat-hf (its official template writes `<|role|>\n` + text for every turn):
#   [gMASK]<sop><|system|>\nS<|user|>\nU<|assistant|>\nA<|user|>\nU2<|assistant|>\nA2...
# The generation prompt is `<|assistant|>`; the model writes "\n" + reply and stops by emitting
# <|user|> (an eos id in its generation_config). So the "\n", the reply and the following <|user|>
# are the assistant's tokens (the layout of TRL's glm4moe training template), and a user turn that
# follows an assistant turn does not repeat <|user|>.
GLM4_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ '<|system|>\n' + m['content'] }}"
    "{%- elif m['role'] == 'user' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'assistant' -%}{{ '<|user|>' }}{%- endif -%}"
    "{{ '\n' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<|assistant|>' }}"
    "{%- generation -%}{{ '\n' + m['content'] + '<|user|>' }}{%- endgeneration -%}"
    "{%- else -%}{{ raise_exception('unknown role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

# Baichuan2-Chat (its generation_utils.build_chat_input): the system text as plain tokens, then
# <reserved_106> (user_token_id 195) + user text, <reserved_107> (assistant_token_id 196) + reply.
# Its fine-tune.py teaches the model to end a reply with </s> (eos id 2), so </s> closes the reply.
BAICHUAN2_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}{{ '<reserved_106>' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<reserved_107>' }}"
    "{%- generation -%}{{ m['content'] + '</s>' }}{%- endgeneration -%}"
    "{%- else -%}{{ raise_exception('unknown role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<reserved_107>' }}{%- endif -%}"
)

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry name used in params
    hub_id: str  # Hugging Face repo id of the original weights
    revision: str | None = None  # hub branch/tag/commit (None: main); the lock file's commit wins
    chat_template: str | None = None  # training template set on the tokenizer (None: keep its own)
    eot_token: str = "</s>"  # the token that ends an assistant turn (generation stops on it)
    special_tokens: tuple = ()  # tokens the template uses that must never be split
    pad_token: str | None = None  # padding token when the tokenizer has none (never the eot token)
    lora_target_modules: list | str = field(default_factory=lambda: list(LLAMA_LINEAR))
    dtype: str = "bfloat16"  # torch dtype the weights are loaded in
    convert: str | None = None  # conversion before loading: None | "baichuan_to_llama"
    padding_free: bool = True  # the architecture takes packed rows (position_ids, no padding)
    embedded: bool = False  # weights come from mi_llm.models.embedded.model_dir() (no download)
    tokenizer_files: str | None = (
        None  # folder of data/tokenizers/ with the published tokenizer files
    )


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) a model applies to its output layer's logits (Gemma 2 soft-caps; most neither)."""
    cfg = config.get_text_config()
    scale = getattr(cfg, "logit_scale", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = 1 / cfg.logits_scaling
    return (1.0 if scale is None else scale), getattr(cfg, "final_logit_softcapping", None)


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            name="gemma3-270m",
            hub_id="google/gemma-3-270m",
            chat_template=GEMMA3_TEMPLATE,
            eot_token="<end_of_turn>",
            special_tokens=("<start_of_turn>", "<end_of_turn>"),
            pad_token="<pad>",
            embedded=True,
        ),
        ModelSpec(
            name="baichuan2-7b-chat",
            hub_id="baichuan-inc/Baichuan2-7B-Chat",
            chat_template=BAICHUAN2_TEMPLATE,
            eot_token="</s>",
            special_tokens=("<reserved_106>", "<reserved_107>"),
            pad_token="<unk>",
            convert="baichuan_to_llama",
            tokenizer_files="baichuan2-7b-chat",
        ),
        ModelSpec(
            name="glm-4-9b-chat",
            hub_id="THUDM/glm-4-9b-chat-hf",
            chat_template=GLM4_TEMPLATE,
            eot_token="<|user|>",
            pad_token="<|endoftext|>",
            special_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"),
            # Glm4 fuses gate and up projections into one Linear
            lora_target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_up_proj",
                "down_proj",
            ],
            tokenizer_files="glm-4-9b-chat-hf",
        ),
        ModelSpec(
            name="llama3-8b-chinese-chat-v2",
            hub_id="shenzhi-wang/Llama3-8B-Chinese-Chat",
            revision="v2",
            chat_template=LLAMA3_TEMPLATE,
            eot_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
            special_tokens=(
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ),
            tokenizer_files="llama3-8b-chinese-chat-v2",
        ),
    ]
}
NAMES = list(REGISTRY)


def get(name: str) -> ModelSpec:
    """The registry entry for a model name (unknown names raise, listing the known ones)."""
    if name not in REGISTRY:
        raise KeyError(
            f"unknown model {name!r}; known models: {NAMES} (add one in mi_llm/models/registry.py)"
        )
    return REGISTRY[name]


# ----------------------------------------------------------------------------- pinned weights
# `python -m mi_llm models fetch` (mi_llm.models.hub) resolves each model's revision to a commit on
# its first fetch and writes it here; every later fetch and every load uses that commit.
LOCK_ENV = "MI_LLM_MODELS_LOCK"  # another lock file (tests; a shared results folder)


def lock_file() -> Path:
    """models.lock.json at the project root, or $MI_LLM_MODELS_LOCK."""
    import os

    return Path(
        os.environ.get(LOCK_ENV) or Path(__file__).resolve().parents[2] / "models.lock.json"
    )


def locked() -> dict:
    """The lock file's entries {name: {hub_id, commit, files, ...}}; {} before the first fetch."""
    import json

    f = lock_file()
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))["models"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{f}: not a models lock file ({e}); delete it and fetch again") from None


def revision(name: str) -> str | None:
    """The revision `name` loads: the commit its first fetch pinned, else the registry's."""
    entry = locked().get(name)
    return entry["commit"] if entry else get(name).revision


class WeightsNotFetched(RuntimeError):
    """A hub model's weights are not in the local cache while the hub is off (HF_HUB_OFFLINE)."""


def require_fetched(name: str) -> None:
    """With HF_HUB_OFFLINE set, raise WeightsNotFetched naming the command that fetches `name`."""
    import os

    from huggingface_hub import try_to_load_from_cache

    spec = get(name)
    if spec.embedded or os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false", "False"):
        return
    rev = revision(name)
    if not isinstance(try_to_load_from_cache(spec.hub_id, "config.json", revision=rev), str):
        raise WeightsNotFetched(
            f"model {name}: the weights of {spec.hub_id} ({rev or 'main'}) are not in the local "
            f"Hugging Face cache and HF_HUB_OFFLINE is set; fetch them once with "
            f"`python -m mi_llm models fetch {name}` (or set model_paths.{name} to a local folder)"
        )


def weights_path(name: str) -> str:
    """Local folder or hub id from which `name` loads (converting it first when the entry says so)."""
    spec = get(name)
    if spec.embedded:
        from mi_llm.models import embedded

        return str(embedded.model_dir())
    if spec.convert == "baichuan_to_llama":
        from mi_llm.models import convert_baichuan

        return str(convert_baichuan.cached(spec.hub_id, revision(name)))
    return spec.hub_id


def load_tokenizer(name: str, path: str | Path | None = None):
    """The tokenizer of `name` (or of the folder `path`, laid out as the model's hub snapshot) with the
    entry's training chat template; never runs a repository's own code."""
    spec = get(name)
    src = str(path) if path is not None else weights_path(name)
    rev = revision(name) if path is None and not spec.embedded and not spec.convert else None
    return prepare_tokenizer(spec, _raw_tokenizer(spec, src, rev))


def _raw_tokenizer(spec: ModelSpec, src: str, rev: str | None):
    """A hub snapshot's tokenizer: tokenizer.json as is, or Baichuan2's SentencePiece model converted."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(src)
    if spec.embedded or not folder.is_dir():
        return AutoTokenizer.from_pretrained(src, revision=rev)  # the embedded model, or a hub id
    if (folder / "tokenizer.json").exists():
        # PreTrainedTokenizerFast reads tokenizer.json and tokenizer_config.json (special tokens,
        # template) and never imports the auto_map code that AutoTokenizer would ask to trust
        return PreTrainedTokenizerFast.from_pretrained(src)
    if spec.convert == "baichuan_to_llama" and (folder / "tokenizer.model").exists():
        from mi_llm.models import convert_baichuan

        return convert_baichuan.tokenizer(folder)
    raise FileNotFoundError(
        f"model {spec.name}: {folder} has no tokenizer.json"
        + (" or tokenizer.model" if spec.convert else "")
    )


def prepare_tokenizer(spec: ModelSpec, tok):
    """Set the entry's chat template, keep its special tokens whole and give it a pad token."""
    added = tok.get_added_vocab()  # tokens the tokenizer already keeps whole
    missing = [t for t in spec.special_tokens if t not in added]
    if missing:
        tok.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if spec.chat_template is not None:
        tok.chat_template = spec.chat_template
    if tok.pad_token is None or tok.pad_token == spec.eot_token:
        # a pad equal to the eot token would be masked out of the loss and of the token counts
        tok.pad_token = spec.pad_token if spec.pad_token in tok.get_vocab() else tok.eos_token
    if spec.eot_token not in tok.get_vocab():
        raise ValueError(
            f"model {spec.name}: end-of-turn token {spec.eot_token!r} is not in the tokenizer"
        )
    return tok


def load(name: str, device: str = "cpu", dtype: str | None = None, path: str | Path | None = None):
    """(model, tokenizer) for a registry name; `path` loads any local folder instead (tests).

    dtype None: the registry's, in fp32 on a CPU without native bf16 (see compute_dtype).
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = get(name)
    dtype = dtype or compute_dtype(spec.dtype, device)
    if path is not None and spec.convert == "baichuan_to_llama" and _model_type(path) == "baichuan":
        from mi_llm.models import convert_baichuan

        path = convert_baichuan.convert(path, Path(path).with_name(Path(path).name + "-llama"))
    if path is None:
        require_fetched(name)
    src = str(path) if path is not None else weights_path(name)
    rev = revision(name) if path is None and not spec.embedded and not spec.convert else None
    tok = load_tokenizer(name, path)
    model = AutoModelForCausalLM.from_pretrained(
        src,
        revision=rev,
        dtype=getattr(torch, dtype),
        attn_implementation="sdpa",
    )
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))  # only when special tokens had to be added
    eot = tok.convert_tokens_to_ids(spec.eot_token)
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [e for e in [eos] if e is not None]
    model.generation_config.eos_token_id = eos + [eot] if eot not in eos else eos
    return model.to(device), tok


def _model_type(path) -> str | None:
    import json

    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") if cfg.exists() else None
