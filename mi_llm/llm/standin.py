"""A strong-model stand-in for the study's LLM (judge, MI transcriber, MITI coder), for dry runs.

`answer(request)` reads an OpenAI chat request built from one of the study's prompts and answers as
a capable model would, in the form the stage parses: the judge's JSON scores, a whole dialogue
rewritten in MI style (every client turn verbatim, the counselor's turns as reflections, permission
and open questions, within the length limits), a MITI behaviour code, the four MITI globals. The
answers follow rules over the given text, so they are deterministic and depend on the input; they
make the pipeline's shape real, not its findings. `serving(port)` runs it behind the local
OpenAI-compatible server (mi_llm.llm.openai_server) on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

from mi_llm.llm import openai_server

LINE = re.compile(r"^(来访者|咨询师)：(.*)$")
MI_TAG = "<mi:complex_reflection>"


def _content(m: dict) -> str:
    c = m.get("content", "")
    return c if isinstance(c, str) else "".join(part.get("text", "") for part in c)


def answer(req: dict) -> str:
    """The stand-in's answer to one chat request (ValueError for a prompt it does not know)."""
    msgs = req.get("messages") or []
    system = "\n".join(_content(m) for m in msgs if m.get("role") == "system")
    last = _content(msgs[-1]) if msgs else ""
    if "CPsyCoun" in system:
        return judge(last)
    if "原始对话：" in last:
        return rewrite_dialogue(last, tagged="<mi:" in system)
    if "来访者接着说：" in last:
        return rewrite_turn(last)
    if "Counselor utterance to code:" in last:
        return miti_code(last.split("Counselor utterance to code:", 1)[1].strip())
    if "EMPATHY" in last and "CCT" in last:
        return miti_globals(last)
    raise ValueError(f"the stand-in does not know this prompt: {last[:120]!r}")


# ----------------------------------------------------------------------------- 01 judge
def judge(prompt: str) -> str:
    """CPsyCoun rubric scores from the counselor's lines: questions, reflections, monologues."""
    dialogue = prompt.split("对话：", 1)[-1]
    counselor = [
        m.group(2)
        for line in dialogue.splitlines()
        if (m := LINE.match(line.strip())) and m.group(1) == "咨询师"
    ]
    if not counselor:
        return json.dumps(
            {"comprehensiveness": 0, "professionalism": 0, "authenticity": 0, "safety": 1}
        )
    asks = sum("？" in t or "?" in t for t in counselor) / len(counselor)
    reflects = sum(
        any(w in t for w in ("听起来", "感觉", "似乎", "你觉得")) for t in counselor
    ) / len(counselor)
    mean_len = sum(map(len, counselor)) / len(counselor)  # characters per counselor turn
    return json.dumps(
        {
            "comprehensiveness": 2 if len(counselor) >= 4 else 1,
            "professionalism": min(3, round(3 * (asks + reflects) / 1.2)),
            "authenticity": 3
            if mean_len <= 80
            else 2
            if mean_len <= 200
            else 1,  # long monologues lose
            "safety": 1,
        },
        ensure_ascii=False,
    )


# ----------------------------------------------------------------------------- 02 transcription
def _gist(text: str, n: int = 16) -> str:
    """The first clause of a client turn, at most n characters (what a reflection picks up)."""
    clause = re.split(r"[，。！？,.!?；;]", text.strip(), maxsplit=1)[0] or text.strip()
    return clause[:n]


def _counselor(client: str, original: str, long: bool) -> str:
    reflection = (
        f"听起来“{_gist(client)}”对你来说很重要，这里面也有你的不容易。"
        if client
        else "谢谢你愿意来聊一聊。"
    )
    question = "你自己是怎么看待这件事的？"
    if not long or not original:
        return reflection + question
    return (
        reflection
        + f"如果你愿意，我想分享一点想法：{original.strip()}这些只是参考，由你来决定。"
        + question
    )


def rewrite_dialogue(prompt: str, tagged: bool = False) -> str:
    """Every client line verbatim; every counselor line an MI turn (reflection, permission, open
    question). The long form keeps the counselor's content as information shared with permission;
    the short form is used where the long one would exceed 1.8x the source length."""
    body = prompt.split("原始对话：", 1)[1]
    lines = [line.strip() for line in body.splitlines()]
    turns = [(m.group(1), m.group(2)) for line in lines if (m := LINE.match(line))]
    if not turns:
        raise ValueError("the transcription prompt holds no 来访者：/咨询师： lines")
    source_len = sum(len(t) for _, t in turns)

    def render(long: bool) -> list[str]:
        out, client = [], ""
        for who, text in turns:
            if who == "来访者":
                client = text
                out.append(f"来访者：{text}")
            else:
                out.append(f"咨询师：{MI_TAG if tagged else ''}{_counselor(client, text, long)}")
        return out

    out = render(long=True)
    if sum(len(x) - 4 for x in out) > 1.8 * source_len:
        out = render(long=False)
    return "\n".join(out)


def rewrite_turn(prompt: str) -> str:
    """One counselor turn (unit: turn): a reflection of the client's next line and an open question."""
    client = prompt.split("来访者接着说：", 1)[1].splitlines()[0]
    return _counselor(client, "", long=False)


# ----------------------------------------------------------------------------- 04 MITI
def miti_code(utterance: str) -> str:
    """A MITI 4.2.1 behaviour code from the utterance's form."""
    u = utterance.lower()
    if any(w in u for w in ("你必须", "你应该", "you must", "you should")):
        return "PERSUADE"
    if any(w in u for w in ("如果你愿意", "可以分享", "if you like", "may i")):
        return "SEEK"
    if any(w in u for w in ("由你来决定", "your choice", "up to you")):
        return "AUTO"
    if any(w in u for w in ("听起来", "似乎", "sounds like", "it seems")):
        return "CR"
    if "？" in u or "?" in u:
        return "Q"
    if any(w in u for w in ("你做得", "很勇敢", "well done")):
        return "AF"
    return "GI"


def miti_globals(prompt: str) -> str:
    """The four MITI globals (1-5) from the share of reflective and questioning counselor turns."""
    transcript = prompt.split("Conversation:", 1)[-1]
    lines = [
        x for x in transcript.splitlines() if x.lower().startswith(("counselor", "咨询师"))
    ] or [transcript]
    codes = [miti_code(x) for x in lines]
    mi = sum(c in ("CR", "SEEK", "AUTO", "AF") for c in codes) / len(codes)
    q = sum(c == "Q" for c in codes) / len(codes)

    def scale(x):
        return max(1, min(5, 1 + round(4 * x)))

    return json.dumps(
        {
            "CCT": scale(mi + q / 2),
            "SST": scale(0.5 + mi / 2),
            "PARTNER": scale(mi),
            "EMPATHY": scale(mi + 0.25),
        }
    )


@contextmanager
def serving(port: int = 0):
    """The stand-in behind the local OpenAI-compatible server on 127.0.0.1:`port`; yields its URL."""
    with openai_server.serve(answer, port=port) as url:
        yield url
