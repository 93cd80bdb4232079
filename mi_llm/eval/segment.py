"""A counselor reply cut into utterances, the unit MITI 4.2.1 codes (one complete thought each).

The rules, in order; a cut never drops or reorders a character (the utterances, joined, are the
reply without its whitespace between them):

1. Lines. A line break ends an utterance; a line's list marker ("1.", "-", "•") stays with it.
2. Sentences. An utterance ends after a run of 。！？!?；; or …, with the closing quotes and
   brackets that follow it (”’"')）】」』). A "." (or "...") ends one only when whitespace or the
   end of the text follows it, the word before it is not an abbreviation (Mr., Dr., e.g.,
   etc.) and it is not a list number ("1. "), so "3.5", "e.g. this" and "1. 多喝水" stay whole.
3. Clauses. A question that begins after a comma (，,) is its own utterance when the clause before
   the comma is a statement of its own: a reflection followed by a question ("You feel stuck,
   what would help?", "你很担心他，你希望……？") holds two behaviours, and MITI gives each its
   code. The question is recognised by its opening words (QUESTION_OPENERS: what, how, do you,
   你觉得, 是什么, ...) and the sentence's question mark; the clause before must hold at least
   three English words or five CJK characters and not open with a subordinating word (if, when,
   because, 如果, 因为, ...: "If you could change one thing, what would it be?" is one thought).
   A tag question (TAG_QUESTIONS: "..., is that right?", "……，对吗？") checks the statement
   before it and stays with it.
4. Fragments. A piece without a letter, digit or CJK character ("--", "……") joins the utterance
   before it (the next one when it comes first).
"""

from __future__ import annotations

import re

from mi_llm.data.schema import CJK_CHARS

_CONTENT = re.compile(rf"[{CJK_CHARS}A-Za-z0-9]")
_CLOSERS = "”’\"')）】」』"
# rule 2: a run of hard sentence ends (with closers), or dots followed by whitespace / the end
_END = re.compile(rf"[。！？!?；;…]+[{_CLOSERS}]*|\.+[{_CLOSERS}]*(?=\s|$)")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "approx", "no"}
QUESTION_OPENERS_EN = (
    "what", "how", "why", "when", "where", "who", "which", "do you", "does", "did you",
    "would you", "could you", "can you", "will you", "are you", "is it", "is that", "is there",
    "have you", "has", "should", "shall we", "may i", "might you",
)  # fmt: skip
QUESTION_OPENERS_ZH = (
    "你觉得", "你认为", "你想", "你愿意", "你希望", "你能", "你会", "你是否", "你有没有",
    "你打算", "你对", "你怎么", "你为什么", "是什么", "什么", "怎么", "为什么", "哪", "能不能",
    "可不可以", "是不是", "有没有", "那你", "那么你", "我们可以", "我可以",
)  # fmt: skip
QUESTION_OPENERS = QUESTION_OPENERS_EN + QUESTION_OPENERS_ZH
SUBORDINATORS = (
    "if", "when", "whenever", "before", "after", "because", "since", "although", "though",
    "while", "as", "unless", "once", "until", "so that",
    "如果", "假如", "要是", "当", "因为", "虽然", "既然", "等", "只要", "一旦", "为了",
)  # fmt: skip
TAG_QUESTIONS = {
    "is that right", "is that so", "is that true", "is that correct", "right", "isn't it",
    "don't you", "do you", "yes", "no", "对吗", "是吗", "对不对", "是不是", "是这样吗", "没错吧", "对吧",
}  # fmt: skip
_COMMA = re.compile(r"[，,]\s*")
_EN_WORD = re.compile(r"[A-Za-z0-9']+")
_CJK_CHAR = re.compile(f"[{CJK_CHARS}]")


def _opens_with(text: str, words) -> bool:
    t = text.lower()
    return any(
        t.startswith(w) and not (w.isascii() and t[len(w) : len(w) + 1].isalpha()) for w in words
    )


def _statement(clause: str) -> bool:
    """Whether the clause before a comma is a statement that stands alone (rule 3)."""
    c = clause.strip().lstrip("-•*0123456789. ")
    long_enough = len(_EN_WORD.findall(c)) >= 3 or len(_CJK_CHAR.findall(c)) >= 5
    return long_enough and not _opens_with(c, SUBORDINATORS)


def _sentences(line: str) -> list[str]:
    """Rule 2: a line cut after its sentence ends."""
    out, start = [], 0
    for m in _END.finditer(line):
        if m.group(0).startswith("."):
            word = re.search(r"([A-Za-z.]+)$", line[: m.start()])
            if word and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
                continue
            if re.fullmatch(r"\s*\d{1,2}", line[start : m.start()]):  # a list marker "1."
                continue
        out.append(line[start : m.end()])
        start = m.end()
    out.append(line[start:])
    return [s.strip() for s in out if s.strip()]


def _clauses(sentence: str) -> list[str]:
    """Rule 3: a question after a comma cut off a statement before it."""
    if not sentence.rstrip(_CLOSERS).endswith(("?", "？")):
        return [sentence]
    for m in _COMMA.finditer(sentence):
        before, after = sentence[: m.end()], sentence[m.end() :]
        tag = after.rstrip(_CLOSERS + "?？ ").lower() in TAG_QUESTIONS
        if not tag and _opens_with(after, QUESTION_OPENERS) and _statement(sentence[: m.start()]):
            return [before.strip(), *_clauses(after)]
    return [sentence]


def segment(text: str) -> list[str]:
    """The utterances of a reply, in order (rules in the module docstring); [] for empty text."""
    pieces = []
    for line in (text or "").splitlines():
        for s in _sentences(line.strip()):
            pieces += _clauses(s)
    out: list[str] = []
    for p in pieces:  # rule 4
        if _CONTENT.search(p) or not out:
            out.append(p)
        else:
            out[-1] = f"{out[-1]} {p}"
    if len(out) > 1 and not _CONTENT.search(out[0]):
        out[:2] = [f"{out[0]} {out[1]}"]
    return out
