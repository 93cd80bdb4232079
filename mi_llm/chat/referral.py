"""The referral reply sent when the crisis screen flags a message, and the log of those events.

    cfg = referral_config()                       # the defaults, or updated from a YAML/JSON file
    texts = render_all(cfg, country="UK")         # every (category, language) rendered: at start-up
    texts[("harm_others", "zh")]

Replies are fixed texts per category (`suicide_self_harm`, `harm_others`) and language (`zh`,
`en`), with the crisis line of a country put in for `{hotline}`. A message in traditional
characters gets the Chinese reply in traditional characters. `render_all` renders every reply for
every configured country at start-up, so a broken reply or an unknown country fails before the
chat serves anyone, never at the first crisis message. `log_event` appends a crisis event to an
append-only file before any model is asked for a reply.

Override the texts with a JSON or YAML file of the same shape as `REFERRAL`:
{"replies": {category: {lang: text}}, "hotlines": {country: {lang: text}},
"default_country": {lang: country}}; a reply given as {lang: text} serves both categories.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from mi_llm.data.schema import CJK, DataError

SUICIDE, HARM = "suicide_self_harm", "harm_others"
CATEGORIES = (SUICIDE, HARM)
LANGUAGES = ("zh", "en")

REFERRAL = {
    "replies": {
        SUICIDE: {
            "zh": "听到你这样说，我很担心你的安全。你的生命很重要，你不必独自承受。如果你现在有危险，"
            "请立即拨打急救电话或去最近的医院急诊。你也可以马上联系危机热线：{hotline}。"
            "我是一个研究用的AI程序，不是咨询师，无法替代专业的危机干预；请告诉身边信任的人，让他们陪着你。",
            "en": "I'm really concerned about your safety after what you just said. Your life matters, "
            "and you don't have to carry this alone. If you are in immediate danger, please call your "
            "local emergency number or go to the nearest emergency department. You can also reach a "
            "crisis line right now: {hotline}. I am a research program, not a counsellor, and cannot "
            "replace crisis support; please reach out to someone you trust and let them stay with you.",
        },
        HARM: {
            "zh": "听到你想伤害别人，我很重视。这样的愤怒和痛苦往往很难独自扛住。请先离开那个人和任何可能伤人的东西，"
            "给自己一点时间。如果有人正处在危险中，请立即报警或拨打急救电话。你也可以马上联系危机热线，"
            "和受过训练的人谈谈：{hotline}。我是一个研究用的AI程序，不是咨询师，无法替代专业帮助。",
            "en": "I'm taking what you said about hurting someone seriously. Anger and pain like this are "
            "hard to hold on your own. Please put distance between yourself and that person and anything "
            "that could be used to hurt them, and give yourself time. If anyone is in danger right now, "
            "call your local emergency number. You can also talk to a trained person on a crisis line "
            "right now: {hotline}. I am a research program, not a counsellor, and cannot replace "
            "professional help.",
        },
    },
    "hotlines": {
        "CN": {
            "zh": "全国心理援助热线 400-161-9995，北京心理危机研究与干预中心 010-82951332，急救 120，报警 110",
            "en": "China psychological assistance hotline 400-161-9995, Beijing crisis line "
            "010-82951332, ambulance 120, police 110",
        },
        "TW": {
            "zh": "安心专线 1925，生命线 1995，张老师 1980，紧急情况 119 / 110",
            "en": "the 1925 Mental Health Line, Lifeline 1995, Teacher Chang 1980, emergencies 119 / 110",
        },
        "HK": {
            "zh": "撒玛利亚防止自杀会 2389 2222，撒玛利亚会 2896 0000，紧急情况 999",
            "en": "the Samaritan Befrienders Hong Kong on 2389 2222, The Samaritans on 2896 0000, "
            "emergencies 999",
        },
        "US": {
            "zh": "988 自杀与危机生命线（拨打或发短信 988），紧急情况 911",
            "en": "the 988 Suicide & Crisis Lifeline (call or text 988), emergencies 911",
        },
        "UK": {
            "zh": "Samaritans 116 123，紧急情况 999",
            "en": "Samaritans on 116 123, emergencies 999",
        },
    },
    "default_country": {"zh": "CN", "en": "US"},
}


def language(text: str) -> str:
    """'zh' when the text has any CJK ideograph, else 'en'."""
    return "zh" if CJK.search(text or "") else "en"


def traditional(text: str) -> bool:
    """Is a Chinese text written in traditional characters (it changes when simplified)?"""
    import zhconv

    han = "".join(CJK.findall(text or ""))
    return bool(han) and zhconv.convert(han, "zh-cn") != han


def referral_config(path=None) -> dict:
    """The referral replies and hotlines: the defaults, updated key by key from a JSON/YAML file."""
    cfg = json.loads(json.dumps(REFERRAL))
    if path is None:
        return cfg
    import yaml

    try:
        user = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(path, "file", "yaml", str(e)) from None
    except OSError as e:
        raise DataError(path, "file", "path", f"cannot read it: {e.strerror}") from None
    if not isinstance(user, dict):
        raise DataError(path, "file", "top level", "must be a mapping")
    for key, value in user.items():
        if key not in cfg or not isinstance(value, dict):
            raise DataError(
                path, "file", key, f"unknown key or not a mapping (known: {sorted(cfg)})"
            )
        for k, v in value.items():
            if key == "replies" and k in LANGUAGES and isinstance(v, str):
                for category in CATEGORIES:  # {lang: text}: one reply for both categories
                    cfg["replies"][category][k] = v
            elif key == "replies" and k not in CATEGORIES:
                raise DataError(path, "replies", k, f"must be one of {CATEGORIES} or {LANGUAGES}")
            else:
                cfg[key][k] = {**cfg[key].get(k, {}), **v} if isinstance(v, dict) else v
    _check(cfg, path or "referral config")
    return cfg


def _check(cfg: dict, where) -> None:
    """Every reply renders for every country (no unknown placeholder); errors name the key."""
    for country in cfg["hotlines"]:
        for category in CATEGORIES:
            for lang in LANGUAGES:
                try:
                    _render(cfg, category, lang, country)
                except (KeyError, IndexError, ValueError) as e:
                    raise DataError(
                        where,
                        f"replies.{category}.{lang}",
                        "text",
                        f"does not render for country {country!r}: {type(e).__name__} {e} "
                        "(the only placeholder is {hotline})",
                    ) from None


def _render(cfg: dict, category: str, lang: str, country: str) -> str:
    replies = cfg["replies"].get(category) or cfg["replies"][SUICIDE]
    text = replies.get(lang) or replies["en"]
    lines = cfg["hotlines"][country]
    return text.format(hotline=lines.get(lang) or next(iter(lines.values())))


def referral(
    lang: str, country: str | None = None, config: dict | None = None, category: str = SUICIDE
) -> str:
    """The fixed referral reply for a category in a language ('zh'/'en'), with a country's crisis line."""
    cfg = config or REFERRAL
    lang = lang if lang in LANGUAGES else "en"
    country = country or cfg["default_country"].get(lang, "US")
    if country not in cfg["hotlines"]:
        raise ValueError(
            f"no crisis hotline configured for country {country!r} (have {sorted(cfg['hotlines'])})"
        )
    return _render(cfg, category if category in CATEGORIES else SUICIDE, lang, country)


def render_all(config: dict | None = None, country: str | None = None) -> dict:
    """Every referral text, rendered now: {(category, lang): text} for the served country (or each
    language's default country), {(category, "zh-Hant"): text} in traditional characters, and
    {("hotline", lang): the crisis line} for the page."""
    import zhconv

    cfg = config or REFERRAL
    _check(cfg, "referral config")
    out = {}
    for category in CATEGORIES:
        for lang in LANGUAGES:
            out[(category, lang)] = referral(lang, country, cfg, category)
        out[(category, "zh-Hant")] = zhconv.convert(out[(category, "zh")], "zh-tw")
    for lang in LANGUAGES:
        lines = cfg["hotlines"][country or cfg["default_country"].get(lang, "US")]
        out[("hotline", lang)] = lines.get(lang) or next(iter(lines.values()))
    return out


def pick(texts: dict, category: str | None, message: str) -> tuple[str, str]:
    """(reply, language) for a flagged message from render_all's texts."""
    lang = language(message)
    key = "zh-Hant" if lang == "zh" and traditional(message) else lang
    return texts[(category if category in CATEGORIES else SUICIDE, key)], key


def log_event(folder, event: dict) -> Path:
    """Append a crisis event to <folder>/events/crisis.jsonl (flushed to disk; a subfolder, apart
    from the sessions' <id>.jsonl files) and return the file."""
    f = Path(folder) / "events" / "crisis.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(UTC).isoformat(), **event}, ensure_ascii=False)
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return f
