"""Screening one message: the rules, the learned layer, and the two combined (the default).

    s = screen("我 想 紫 砂")
    s.flagged, s.category, s.construct, s.source   # True, "suicide_self_harm", "active_thoughts", "rules"

`screen` is what the chat uses. The learned layer (mi_llm.chat.safety_model) gives P(crisis); the
rules (mi_llm.chat.safety_rules) give a construct, its evidence and span. A message is flagged
when P(crisis) reaches the shipped `threshold`, or when a rule matches and P(crisis) reaches the
lower `rule_threshold`: a rule match is evidence that lowers the bar, and a message the model
finds clearly harmless (a rule word in a context the rules do not know) is not flagged on the
rule alone. Both thresholds were chosen by leave-one-writer-out cross-validation on the training
set (mi_llm.chat.safety_train). `screen_many` does the same for many messages (the learned layer
in batches); `rules_screen` and `model_screens` are the layers alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mi_llm.chat import safety_model
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
    """The learned layer alone: flagged where P(crisis) reaches the shipped threshold."""
    texts = [_check(t) for t in texts]
    if not texts:
        return []
    m = safety_model.load(path)
    probs, constructs = safety_model.predict(texts, path)
    out = []
    for p, construct in zip(probs, constructs):
        flagged = bool(p >= float(m["threshold"]))
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


def combine_layers(rules: Screen, model: Screen, rule_threshold: float) -> Screen:
    """The default screen from the two layers: the model's result when it flags on its own (with
    the rule's construct and evidence when a rule matched too), else the rule's when a rule
    matched and the model's score reaches rule_threshold, else not flagged."""
    if rules.flagged and model.score is not None and model.score >= rule_threshold:
        return Screen(**{**rules.to_dict(), "score": model.score})
    if model.flagged:
        return model
    return Screen(False, score=model.score)


def combine(first: Screen, second: Screen | None) -> Screen:
    """A second opinion (the run's LLM) on a screen: flagged when either flags; the first's result
    when it flags (with the second's score, if the first has none), else the second's."""
    if second is None:
        return first
    if not first.flagged:
        return second
    if first.score is None and second.score is not None:
        return Screen(**{**first.to_dict(), "score": second.score})
    return first


def screen_many(texts: list[str], path=None) -> list[Screen]:
    """The default screen (rules and the learned layer) of many messages."""
    rules = [rules_screen(t) for t in texts]
    model = model_screens(list(texts), path)
    bar = float(safety_model.load(path)["rule_threshold"])
    return [combine_layers(r, m, bar) for r, m in zip(rules, model)]


def screen(text: str) -> Screen:
    """The default screen of one client message: the rules and the learned layer."""
    return screen_many([_check(text)])[0]
