"""The crisis screen's second opinion: the run's LLM classifies a message (cached, retried).

On by default in the chat when the run's LLM is a remote model (`llm.provider: remote`), asked for
every message that the rules and the learned layer leave unflagged; off for the embedded and
served local models, which are too small to judge. The prompt is `LLM_PROMPT` (documented in
docs/safety.md); answers are cached by the study's request cache, so a message is asked once.
"""

from __future__ import annotations

import hashlib
import json
import re

from mi_llm.chat.safety_rules import CONSTRUCTS
from mi_llm.chat.safety_screen import CATEGORIES, Screen

LLM_PROMPT = """You screen messages that a client sends to a counselling chatbot for crisis risk.
Answer with one JSON object and nothing else:
{{"risk": "none" | "suicide_self_harm" | "harm_others", "construct": "<one of: {constructs}, or none>", "evidence": "<the exact words that show it, or empty>"}}
suicide_self_harm: the writer's own wish to be dead, thoughts of suicide, a method, intent or plan,
preparations (a note, collecting means, giving things away, goodbyes), a past attempt, feeling that
others would be better off without them, or self-injury (cutting, burning, hitting themselves),
also said indirectly, with euphemisms, slang, pinyin or spaced characters.
harm_others: the writer's intent or plan to seriously hurt or kill another person.
none: the writer denies current risk; talks about someone else; clinical, teaching, research or
fiction contexts; past risk that is clearly resolved; hyperbole and jokes ("this is killing me",
累死了, 笑死); everyday stress; being the victim of someone else's violence.

Message: {text}"""


def prompt(text: str) -> str:
    return LLM_PROMPT.format(constructs=", ".join(CONSTRUCTS), text=text)


def parse_llm(text: str) -> dict:
    """Validate the classifier's JSON answer; raise ValueError (the endpoint asks again) when wrong."""
    m = re.search(r"\{.*\}", text or "", re.DOTALL)
    if not m:
        raise ValueError("no JSON object")
    d = json.loads(m.group(0))
    if d.get("risk") not in ("none", *CATEGORIES):
        raise ValueError(f"risk must be none|{'|'.join(CATEGORIES)}, got {d.get('risk')!r}")
    construct = d.get("construct")
    construct = construct if construct in CONSTRUCTS else None
    return {"risk": d["risk"], "construct": construct, "evidence": str(d.get("evidence") or "")}


def screen_llm(ep, texts: list[str], llm_params, cache_path=None, retries: int = 2) -> list[Screen]:
    """Screen messages with an LLM through api.complete (cached, retried); unparsable: not flagged."""
    from mi_llm.llm import api

    keys = ["crisis:" + hashlib.sha256(t.encode("utf-8")).hexdigest()[:20] for t in texts]
    contents = {k: prompt(t) for k, t in zip(keys, texts)}  # asked once per text
    settings = {"temperature": 0.0, "max_tokens": 128}
    by_key = api.complete_by_key(
        ep, contents, llm_params=llm_params, cache_path=cache_path, retries=retries,
        settings=settings, validate=parse_llm, desc="crisis screen",
    )  # fmt: skip
    out = []
    for t, k in zip(texts, keys):
        r = by_key[k]
        if not r.ok or r.parsed["risk"] == "none":
            out.append(Screen(False, source="llm"))
            continue
        ev = r.parsed["evidence"]
        a = t.find(ev) if ev else -1
        construct = r.parsed["construct"]
        if construct and CONSTRUCTS[construct] != r.parsed["risk"]:
            construct = None
        out.append(
            Screen(
                True,
                r.parsed["risk"],
                ev or None,
                (a, a + len(ev)) if a >= 0 else None,
                "llm",
                "llm",
                construct,
            )
        )
    return out


def second_opinion(run_params):
    """A function text -> Screen asking the run's remote LLM, or None when the run's LLM is local.
    Returns (function, close): close() ends the endpoint."""
    import contextlib

    from mi_llm.llm import api, cache

    if run_params.llm.provider != "remote":
        return None, lambda: None
    stack = contextlib.ExitStack()
    ep = stack.enter_context(api.endpoint(run_params.llm))
    path = cache.cache_path(run_params)

    def ask(text: str) -> Screen:
        return screen_llm(ep, [text], run_params.llm, cache_path=path)[0]

    return ask, stack.close
