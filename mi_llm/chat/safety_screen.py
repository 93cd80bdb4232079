"""Screening one message: the rules, the learned layer, and the two combined (the default).

    s = screen("我 想 紫 砂")
    s.flagged, s.category, s.construct, s.source   # True, "suicide_self_harm", "active_thoughts", "rules"

`screen` is what the chat uses: the rules first (mi_llm.chat.safety_rules: a construct, its
evidence and span); when they do not flag, the learned layer (mi_llm.chat.safety_model) flags a
message whose P(crisis) reaches the threshold chosen by cross-validation on the training set and
that uses a word of the risk vocabulary (safety_context.RISK_CUE: the model was trained on messages
near crisis only, and without this gate it flags bland talk such as "今天天气不错"), with the
construct the model finds most likely. `screen_many` does the same for many messages
(the learned layer in batches); `rules_screen` and `model_screens` are the layers alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mi_llm.chat import safety_model
from mi_llm.chat.safety_context import risk_cue
from mi_llm.chat.safety_rules import CONSTRUCTS, HARM, SUICIDE, matches
from mi_llm.chat.safety_text import normalise, span

CATEGORIES = (SUICIDE, HARM)
LAYERS = ("rules", "model", "combined")


@dataclass
class Screen:
    flagged: bool
    category: str | None = None  # suicide_self_harm | harm_others | None
    evidence: str | None = None  # the matched words, as written in the message
    span: tuple | None = None  # (start, end) of the evidence in the message
    rule: str | None = None  # the rule's construct, "model" or "llm": what flagged it
    source: str = "rules"  # rules | model | llm
    construct: str | None = None  # the construct detected (CONSTRUCTS), when known
    score: float | None = None  # the learned layer's P(crisis), when it was asked

    def to_dict(self) -> dict:
        return asdict(self)


def _check(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"screen: expected a str message, got {type(text).__name__}")
    return text


def rules_screen(text: str) -> Screen:
    """The rules alone: the first construct matched in the message, with its evidence and span."""
    norm, where = normalise(_check(text))
    found = matches(norm)
    if not found:
        return Screen(False)
    m = found[0]
    a, b = span(text, where, m["start"], m["end"])
    return Screen(True, m["category"], text[a:b], (a, b), m["construct"], "rules", m["construct"])


def model_screens(texts: list[str], path=None) -> list[Screen]:
    """The learned layer alone: flagged where P(crisis) reaches the shipped threshold and the
    message uses a word of the risk vocabulary."""
    texts = [_check(t) for t in texts]
    if not texts:
        return []
    m = safety_model.load(path)
    probs, constructs = safety_model.predict(texts, path)
    out = []
    for t, p, construct in zip(texts, probs, constructs):
        flagged = bool(p >= float(m["threshold"])) and risk_cue(normalise(t)[0])
        out.append(
            Screen(
                flagged,
                CONSTRUCTS[construct] if flagged else None,
                None,
                None,
                "model" if flagged else None,
                "model",
                construct if flagged else None,
                round(float(p), 4),
            )
        )
    return out


def combine(first: Screen, second: Screen | None) -> Screen:
    """Two layers: flagged when either flags; the first's result when it flags (with the second's
    score, if the first has none), else the second's."""
    if second is None:
        return first
    if not first.flagged:
        return second
    if first.score is None and second.score is not None:
        return Screen(**{**first.to_dict(), "score": second.score})
    return first


def screen_many(texts: list[str], path=None) -> list[Screen]:
    """The default screen (rules, then the learned layer) of many messages."""
    rules = [rules_screen(t) for t in texts]
    model = model_screens(list(texts), path)
    return [combine(r, m) for r, m in zip(rules, model)]


def screen(text: str) -> Screen:
    """The default screen of one client message: the rules, then the learned layer."""
    return screen_many([_check(text)])[0]
