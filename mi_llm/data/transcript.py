"""A rewritten dialogue read and checked against its source: the 来访者：/咨询师： line format, and
the validation that keeps the source's structure and client words (nothing invented, nothing
lost) and refuses a counselor turn that is not a whole rewrite.

The source's client words are kept (docs/reliability.md): a validated dialogue stores the
source's client turns, not the model's copy of them; a client turn may differ only within
`client_edit_tolerance`, and an inserted or dropped negation, a changed sentence type (a statement
made a question, or a question a statement) or a changed number fails whatever the tolerance; a counselor
turn that carries a speaker label or a whole sentence of the client's is refused (the model
putting words in the client's mouth)."""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata

from mi_llm.data import schema
from mi_llm.data.schema import Dialogue, Turn, cjk_share

LABEL = {"client": "来访者", "counselor": "咨询师"}
SPEAKER_OF = {"来访者": "client", "咨询师": "counselor", "心理咨询师": "counselor"}
LINE = re.compile(r"^\s*(来访者|心理咨询师|咨询师)\s*[：:]\s*(.*)$")
SPEAKER_INSIDE = re.compile(r"(来访者(?:接着说)?|心理咨询师|咨询师|求助者|支持者)\s*[：:]")
# labels a small model puts before its reply, echoing the prompt (原回复：…) or announcing it (改写：…)
REPLY_LABEL = re.compile(
    r"^\s*(?:原回复|原句|原文|改写后的回复|改写后|改写|回复|回答|MI回复|MI改写|新回复|输出)"
    r"\s*[：:]\s*"
)


# ----------------------------------------------------------------------------- formats
def format_turns(turns: list[Turn]) -> str:
    """One "来访者：…" / "咨询师：…" line per turn (newlines inside a turn become spaces)."""
    return "\n".join(f"{LABEL[t.speaker]}：{' '.join(t.text.split())}" for t in turns)


def parse_dialogue(text: str) -> list[Turn]:
    """Parse labelled lines back into turns; unlabelled lines continue the previous turn."""
    turns: list[Turn] = []
    for line in text.strip().splitlines():
        m = LINE.match(line)
        if m:
            turns.append(Turn(SPEAKER_OF[m.group(1)], m.group(2).strip()))
        elif line.strip() and turns:
            turns[-1].text += line.strip()
        elif line.strip():
            raise ValueError(f"unparseable: text before the first speaker label: {line[:40]!r}")
    if not turns:
        raise ValueError("unparseable: no 来访者：/咨询师： lines")
    return turns


# ----------------------------------------------------------------------------- validation
def check_text(new: str, source: str, tp) -> None:
    """Language and length checks shared by both units; raises ValueError("reason: detail")."""
    if not new.strip():
        raise ValueError("empty: no text")
    src_cjk, new_cjk = cjk_share(source, "chars"), cjk_share(new, "chars")
    if src_cjk >= 0.3 and new_cjk < 0.5 * src_cjk:  # a Chinese source must give a Chinese rewrite
        raise ValueError(f"language: CJK share {new_cjk:.2f} vs source {src_cjk:.2f}")
    ratio = len(new) / max(1, len(source))
    if ratio < tp.min_length_ratio:
        raise ValueError(f"too_short: length ratio {ratio:.2f} < {tp.min_length_ratio}")
    if ratio > tp.max_length_ratio:
        raise ValueError(f"too_long: length ratio {ratio:.2f} > {tp.max_length_ratio}")


def _untag(turns: list[Turn]) -> tuple[list[Turn], list[Turn]]:
    """Counselor turns must carry a tag: (turns with the tag normalised, turns without it)."""
    tagged, plain = [], []
    for i, t in enumerate(turns):
        if t.speaker == "counselor":
            try:
                label, rest = schema.require_tag(t.text)
            except ValueError as e:
                raise ValueError(f"untagged: turn {i}: {e}") from e
            t, bare = (
                Turn(t.speaker, schema.tag_text(rest.strip(), label)),
                Turn(t.speaker, rest.strip()),
            )
        else:
            bare = t
        tagged.append(t)
        plain.append(bare)
    return tagged, plain


def normalise(text: str) -> str:
    """Text for comparisons: NFKC, lower case, without whitespace, punctuation and symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PSZ")


def edit_share(new: str, source: str) -> float:
    """Share of the normalised texts that differs: 1 - difflib's similarity ratio (0 = equal)."""
    a, b = normalise(new), normalise(source)
    if a == b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


NEGATION = re.compile(
    r"[不没沒别別未无無非莫勿甭]|\b(?:not|no|never|nothing|nobody|none|nor|cannot)\b|n't",
    re.IGNORECASE,
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)?|[零〇一二两三四五六七八九十百千万亿半]")
QUESTION = "？?"  # a statement made a question (or back) changes what the client said
CLIENT_SENTENCE_MIN = 6  # normalised characters: shorter sentences (嗯。/ 是的。) may be echoed


def meaning_edits(new: str, source: str) -> str | None:
    """What a client edit changed that no tolerance allows, or None: negations, sentence types
    (questions against statements; an exclamation mark for a full stop is punctuation), numbers."""
    for what, found in (
        ("negation", lambda t: sorted(m.lower() for m in NEGATION.findall(t))),
        ("sentence type", lambda t: ["?" for c in t if c in QUESTION]),
        ("number", lambda t: sorted(NUMBER.findall(unicodedata.normalize("NFKC", t)))),
    ):
        a, b = found(new), found(source)
        if a != b:
            return f"{what}s {''.join(a) or '(none)'} vs the source's {''.join(b) or '(none)'}"
    return None


# a quotation in a counselor's turn: the counselor quoting the client
QUOTED = re.compile(r"“[^”]*”|「[^」]*」|『[^』]*』|\"[^\"]*\"")


def client_sentences(turns: list[Turn]) -> list[str]:
    """The normalised sentences of the client turns (those of CLIENT_SENTENCE_MIN characters or more)."""
    out = []
    for t in turns:
        if t.speaker == "client":
            for sent in re.split(r"[。？！?!…；;\n]+", t.text):
                key = normalise(sent)
                if len(key) >= CLIENT_SENTENCE_MIN:
                    out.append(key)
    return out


def check_counselor(text: str, clients: list[str], where: str, source: str = "") -> None:
    """A counselor turn must not carry a speaker label or a whole client sentence that its source
    turn did not already hold (a sentence the rewrite put into the counselor's mouth). A client
    sentence in quotation marks is the counselor quoting the client (a reflection), and passes."""
    inside = SPEAKER_INSIDE.search(text)
    if inside:
        raise ValueError(f"speaker_label: {where} contains a speaker label {inside.group(0)!r}")
    key, had = normalise(QUOTED.sub("", text)), normalise(source)
    hit = next((c for c in clients if c in key and c not in had), None)
    if hit:
        raise ValueError(f"client_sentence: {where} repeats the client's sentence {hit[:30]!r}")


def check_structure(turns: list[Turn], source: Dialogue, tp) -> None:
    """Same speakers turn by turn as the source, and the source's client turns kept (within tolerance)."""
    src = source.turns
    if len(turns) < len(src):
        raise ValueError(f"dropped_turns: {len(turns)} turns, source has {len(src)}")
    if len(turns) > len(src):
        raise ValueError(f"invented_turns: {len(turns)} turns, source has {len(src)}")
    for i, (t, s) in enumerate(zip(turns, src)):
        if t.speaker != s.speaker:
            raise ValueError(f"structure: turn {i} is {t.speaker}, in the source {s.speaker}")
    for i, (t, s) in enumerate(zip(turns, src)):
        if t.speaker == "client":
            changed = meaning_edits(t.text, s.text)
            if changed:
                raise ValueError(f"client_altered: turn {i} changes the {changed}: {t.text[:30]!r}")
            share = edit_share(t.text, s.text)
            if share > tp.client_edit_tolerance:
                raise ValueError(
                    f"client_altered: turn {i} differs from the source by {share:.2f} "
                    f"> client_edit_tolerance {tp.client_edit_tolerance}: {t.text[:30]!r}"
                )


def _alternates(turns: list[Turn]) -> bool:
    return all(a.speaker != b.speaker for a, b in itertools.pairwise(turns))


def validate_dialogue(text: str, source: Dialogue, tp) -> list[Turn]:
    """A whole rewritten dialogue: parseable, alternating, same first speaker, counselor turns, language,
    length, then the source's turn structure with its client turns unchanged."""
    turns = parse_dialogue(text)
    tagged = turns
    if tp.tag_behaviour:  # checks below see the words only; the stored turns keep their tags
        tagged, turns = _untag(turns)
    if turns[0].speaker != source.turns[0].speaker:
        raise ValueError(
            f"first_speaker: starts with {turns[0].speaker}, source with {source.turns[0].speaker}"
        )
    if _alternates(source.turns):  # a source that does not alternate is matched turn by turn below
        for i in range(1, len(turns)):
            if turns[i].speaker == turns[i - 1].speaker:
                raise ValueError(
                    f"not_alternating: turns {i - 1} and {i} are both {turns[i].speaker}"
                )
    if not any(t.speaker == "counselor" and t.text for t in turns):
        raise ValueError("no_counselor: no counselor turn")
    check_text("".join(t.text for t in turns), "".join(t.text for t in source.turns), tp)
    check_structure(turns, source, tp)
    clients = client_sentences(source.turns)
    for i, (t, s) in enumerate(zip(turns, source.turns)):
        if t.speaker == "counselor":
            check_counselor(t.text, clients, f"turn {i}", s.text)
    # the stored client turns are the source's own words, not the model's copy of them
    return [
        Turn(t.speaker, s.text) if t.speaker == "client" else t
        for t, s in zip(tagged, source.turns)
    ]


def whole_sentences(line: str) -> str:
    """The line's complete sentences up to the first repeated one (small models run on and loop)."""
    if not line:
        return line
    kept, seen = [], set()
    for sent in re.findall(r"[^。？！?!….]*[。？！?!….]+[」”）)]*", line):
        if sent in seen:
            break
        seen.add(sent)
        kept.append(sent)
    if not kept:
        raise ValueError(f"incomplete: reply does not end a sentence: {line[-10:]!r}")
    return "".join(kept)


def validate_turn(text: str, source: str, context: list[Turn], tp, after: list[Turn] = ()) -> str:
    """One rewritten counselor turn: its first line, unlabelled, complete, new, in language, in
    length, without a sentence of the client's (context, and the turns `after` it)."""
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "")
    m = LINE.match(line)
    if m and SPEAKER_OF[m.group(1)] == "client":
        raise ValueError("wrong_speaker: answered as the client")
    line = m.group(2).strip() if m else line
    while lm := REPLY_LABEL.match(line):  # 原回复：… / 改写：… before the words
        line = line[lm.end() :]
    inside = SPEAKER_INSIDE.search(line)
    if inside:  # before the tag is read: a label anywhere in the line fails
        raise ValueError(f"speaker_label: the reply contains a speaker label {inside.group(0)!r}")
    label = None
    if tp.tag_behaviour:
        try:
            label, line = schema.require_tag(line)
        except ValueError as e:
            raise ValueError(f"untagged: {e}") from e
    line = whole_sentences(line.strip())
    key = normalise(line)
    if key == normalise(source) or any(key == normalise(t.text) for t in context):
        raise ValueError("copied: the reply repeats the source or the context")
    check_counselor(line, client_sentences([*context, *after]), "the reply", source)
    check_text(line, source, tp)
    return schema.tag_text(line, label) if label else line
