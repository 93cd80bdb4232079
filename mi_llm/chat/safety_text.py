"""Normalising a client message for the crisis screen, keeping where each character came from.

    norm, where = normalise("我 想 自殺")   # "我想自杀", [0, 2, 4, 5]

Steps, in order: NFKC (full-width letters and digits, compatibility forms); zero-width and other
format characters dropped; traditional characters converted to simplified (`zhconv`, character by
character, so offsets survive); lower case; spaces between two CJK characters dropped (我 要 自 杀);
runs of spaced single Latin letters joined (k m s); curly quotes straightened; then common
euphemisms, internet spellings and pinyin written as the words they stand for (紫砂 → 自杀,
"unalive" → "kill", "bu xiang huo" → 不想活). `where[i]` is the index in the original text of the
normalised character i, so a match in the normalised text gives its span in the message.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_FORMAT = {"Cf", "Cc", "Mn"}  # zero-width joiners, direction marks, soft hyphens, combining marks
_KEEP_CONTROL = {"\n", "\t"}

# euphemisms, internet spellings and pinyin -> the plain words (matched on the lower-cased text)
SUBSTITUTIONS = [
    # Chinese homophones and slang
    (r"紫砂|紫杀|自鲨|自刹", "自杀"),
    (r"鲨了", "杀了"),
    (r"鲨(?=[我你他她自])", "杀"),
    (r"噶了自己|嘎了自己", "杀了自己"),
    (r"(?<![a-z])(zi ?sha|zisa)(?![a-z])", "自杀"),
    (r"(?<![a-z])zi ?can(?![a-z])", "自残"),
    (r"(?<![a-z])qing ?sheng(?![a-z])", "轻生"),
    (r"(?<![a-z])bu ?xiang ?huo(?: ?le)?(?![a-z])", "不想活了"),
    (r"(?<![a-z])xiang ?si(?: ?le)?(?![a-z])", "想死"),
    (r"(?<![a-z])qu ?si(?![a-z])", "去死"),
    (r"(?<![a-z])yi ?shu(?![a-z])", "遗书"),
    (r"(?<![a-z])huo ?bu ?xia ?qu(?![a-z])", "活不下去"),
    (r"(?<![a-z])wo(?= )", "我"),
    # English internet spellings
    (r"\bunalive|\bun-alive", "kill"),
    (r"\bk\.?m\.?s\b", "kill myself"),
    (r"\bkys\b", "kill yourself"),
    (r"\bs/h\b|\bsh\b(?= (urges?|again|scars?|relapse))", "self-harm"),
    (r"\bsewer ?slide\b", "suicide"),
    (r"\bim\b", "i'm"),
    (r"\bive\b", "i've"),
    (r"\bdont\b", "don't"),
    (r"\bwont\b", "won't"),
    (r"\bcant\b", "can't"),
    (r"\bgonna\b", "going to"),
    (r"\bwanna\b", "want to"),
    (r"\btmrw\b|\btmr\b", "tomorrow"),
    (r"\bu\b", "you"),
    (r"\br\b", "are"),
]
_SUBS = [(re.compile(p), r) for p, r in SUBSTITUTIONS]


@lru_cache(maxsize=8192)
def _simplified(ch: str) -> str:
    import zhconv

    out = zhconv.convert(ch, "zh-cn")
    return out if len(out) == 1 else ch


def _chars(text: str) -> tuple[list[str], list[int]]:
    """Character-level steps: NFKC, format characters dropped, simplified, lower case."""
    chars, where = [], []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch)
        for c in n:
            if unicodedata.category(c) in _FORMAT and c not in _KEEP_CONTROL:
                continue
            if c in "\u2018\u2019\u02bc\uff07":
                c = "'"
            elif c in "\u201c\u201d":
                c = '"'
            elif c.isspace():
                c = " "
            elif CJK_CHAR.match(c):
                c = _simplified(c)
            for lc in c.lower():
                chars.append(lc)
                where.append(i)
    return chars, where


def _drop_spaces(chars: list[str], where: list[int]) -> tuple[list[str], list[int]]:
    """Spaces between two CJK characters, and between spaced single Latin letters, dropped."""
    keep = []
    n = len(chars)
    for i, c in enumerate(chars):
        if c == " " and 0 < i < n - 1:
            a, b = chars[i - 1], chars[i + 1]
            if CJK_CHAR.match(a) and (CJK_CHAR.match(b) or b == " "):
                continue
            if CJK_CHAR.match(b) and a == " ":
                continue
            if (
                a.isalpha()
                and b.isalpha()
                and a.isascii()
                and b.isascii()
                and (i < 2 or not chars[i - 2].isalpha())
                and (i + 2 >= n or not chars[i + 2].isalpha())
            ):
                continue  # "k m s" -> "kms"
        keep.append(i)
    return [chars[i] for i in keep], [where[i] for i in keep]


def _substitute(text: str, where: list[int]) -> tuple[str, list[int]]:
    for rx, new in _SUBS:
        out, out_where, last = [], [], 0
        for m in rx.finditer(text):
            out.append(text[last : m.start()])
            out_where.extend(where[last : m.start()])
            out.append(new)
            out_where.extend([where[m.start()]] * len(new))
            last = m.end()
        if last:
            out.append(text[last:])
            out_where.extend(where[last:])
            text, where = "".join(out), out_where
    return text, where


def normalise(text: str) -> tuple[str, list[int]]:
    """(normalised text, original index of each of its characters); see the module docstring."""
    chars, where = _chars(text)
    chars, where = _drop_spaces(chars, where)
    norm = "".join(chars)
    norm = re.sub(r" {2,}", " ", norm)  # cheap: recompute the map only when spaces collapse
    if len(norm) != len(chars):
        keep = [i for i, c in enumerate(chars) if not (c == " " and i and chars[i - 1] == " ")]
        where = [where[i] for i in keep]
    return _substitute(norm, where)


def span(text: str, where: list[int], a: int, b: int) -> tuple[int, int]:
    """The span in the original text of the normalised characters a..b."""
    if not where or a >= len(where):
        return (0, 0)
    start = where[a]
    end = where[min(b, len(where)) - 1] + 1
    return (start, max(end, start + 1))


def plain(text: str) -> str:
    """The normalised text alone (the learned layer's input)."""
    return normalise(text)[0]
