"""The contexts that cancel a crisis-rule match: hyperbole and jokes, denial, another person as
the subject, quoted speech, clinical/teaching/research/fiction messages, past-and-resolved risk.
Patterns are written for the normalised text (mi_llm.chat.safety_text)."""

from __future__ import annotations

import re

from mi_llm.chat.safety_text import CJK_CHAR as CJK

SUICIDE, HARM = "suicide_self_harm", "harm_others"

# Blanked before matching (same length): hyperbole, idioms and technical words.
HYPERBOLE = [
    (
        r"(累|热|冷|饿|困|渴|烦|忙|气|笑|吓|急|闷|憋|疼|痛|难|丑|美|帅|恨|爱|羡慕|尴尬|无聊|开心|高兴|穷|胖|酸|吵)"
        r"(得|到)?(我)?(要|快)?(死|去世|往生)(了|我了|我|你了|人了?|啦|掉)?"
    ),
    r"把我(搞|整|折磨|累|逼|烦|气|笑|吓|热|冻|饿)死|想死你了?|要了我的命|要我的命|要命|要死要活|死去活来|死定了|死心|死党|死磕|死机|社死|原地去世(?!.{0,6}不是开玩笑)",
    r"杀毒|杀虫|杀菌|杀价|杀青|秒杀|杀时间|杀鸡|跳楼价|跳槽|跳绳|跳舞|跳水|剧本杀|割草|割双眼皮",
    (
        r"\b(dying|dyin) (to|for|of)\b|\bdie of (embarrassment|boredom|laughter|shame|cringe)\b|"
        r"\bdied laughing\b|\b(killing|kills|killed) (me|it|time)\b|\bkill (time|a bad habit|the habit)\b|"
        r"\bcould (murder|kill) (a|some|for)\b|\bsick to death\b|\b(going to|gonna|will|'ll) be the death of me\b|"
        r"\bkill me now\b|\bi'm dead\b|\bdead tired\b|\bend it with (my|him|her)\b|"
        r"\b(phone|battery|laptop|car|plant|plants) (has |had |just )?died\b|"
        r"\bend (this|the|my) (habit|drinking|smoking|addiction|cycle|relationship)\b|\bcut ties\b|"
        r"\bcut (my |the )?(hair|losses|class|classes|carbs|sugar|back)\b"
    ),
]
JOKE = re.compile(
    r"(哈哈|哈$|哈[，,。!！]|lol\b|lmao|haha|\bjk\b|just kidding|开玩笑的|开个玩笑|说说而已|人挺好|不过.{0,4}挺好)"
)
NOT_JOKE = re.compile(
    r"(不是开玩笑|没开玩笑|not joking|no joke|not kidding|i mean it|认真的|for real)"
)

NEGATOR = re.compile(
    r"(不会|不想|不要|不打算|没有|没|从来没|从没|从未|并没有|不是|并不|别|无|未曾|毫无|不再|绝不|"
    r"\bnot\b|\bnever\b|\bno\b|n't\b|\bnor\b|\bwithout\b|\bnothing\b|\bdenies\b|\bdenied\b)"
)
BUT = re.compile(r"(但是?|可是|不过|只是|\bbut\b|\bthough\b|\bhowever\b|\bexcept\b|\bjust\b)")
FIRST = r"(我|自己|\bi\b|\bi'm\b|\bi'd\b|\bi've\b|\bi'll\b|\bme\b|\bmyself\b|\bmy\b)"
THIRD = (
    r"(他|她|他们|她们|它|朋友|闺蜜|同学|同事|室友|妈|爸|母亲|父亲|儿子|女儿|孩子|哥|姐|弟|妹|奶奶|爷爷|外婆|阿公|阿嬷|"
    r"老公|老婆|男朋友|女朋友|表弟|表妹|学生|学妹|学弟|同桌|病人|患者|来访者|个案|主角|角色|作者|歌手|明星|有人|网友|某人|"
    r"\bhe\b|\bshe\b|\bthey\b|\bhis\b|\bher\b|\btheir\b|\bfriend\b|\bbrother\b|\bsister\b|\bmom\b|\bmum\b|"
    r"\bdad\b|\bson\b|\bdaughter\b|\bpatients?\b|\bclients?\b|\bstudents?\b|\bcharacters?\b|\bprotagonist\b|"
    r"\bhero\b|\bnarrator\b|\broommate\b|\bboyfriend\b|\bgirlfriend\b|\bbf\b|\bgf\b|\bsomeone\b|\bpeople\b)"
)
_PERSON = re.compile(FIRST + "|" + THIRD)
_FIRST = re.compile(FIRST)
_SUBJECT = re.compile(r"(我(?!的|们)|\bi\b|\bi'm\b|\bi've\b|\bi'd\b|\bi'll\b|\bme\b|\bmyself\b)")
_REQUEST = re.compile(
    r"(请?帮我|给我|请问|问一下|\bhelp me\b|\bcan you\b|\bi need\b|\bi'm (writing|preparing))"
)
_REPORTED = re.compile(
    THIRD
    + r"[^。！？!?]{0,8}(说|讲|写|告诉我|发消息|传讯息|\bsaid\b|\bsays\b|\btold\b|\btexted\b|\bwrote\b)"
)
# the message is about a patient, a lesson, a study or a story
CONTEXT = re.compile(
    r"(患者|病人|病历|护理|交班|临床|诊断|评估量表|风险评估|药理|剂量|急诊科|医学|课|讲义|教案|培训|讲座|宣讲|教学|演讲|"
    r"论文|研究|统计|数据|文献|报告|调查|问卷|比率|死亡率|小说|电影|电视剧|剧里|书里|动漫|漫画|游戏|歌词|歌里|角色|剧情|"
    r"主角|剧本|咨询师|预防|防自杀|宣传|讲师|研习|家长|\bppt\b|\breport\b|\bprevention\b|来访者|\bpatient|\bcounsell?(ing|or)|\btrainee|\bclinical|\bnursing|\bpharmacolog|\bdosage\b|\bdiagnos|\bintake\b|\blecture|"
    r"\bclass\b|\blesson|\btraining|\bworkshop|\bcurriculum|\bstudy\b|\bresearch|\bstatistic|\bdata\b|"
    r"\bsurvey|\bpaper\b|\bthesis|\bliterature|\bmeta-analysis|\brates?\b|\bnovel\b|\bmovie|\bfilm\b|"
    r"\bseries\b|\bepisode|\bshow\b|\bsong|\blyrics|\bgame\b|\bcharacter|\bprotagonist|\bplot\b|\bscene\b|"
    r"\bpoem|\bstory\b|\bbook\b)"
)
PAST = re.compile(
    r"(以前|曾经|过去|当年|那年|那时|那段|那次|年前|小时候|高中|大学时|读研|岁那年|一度|年轻时|后来|产后|"
    r"坐月子|[一二三四五六七八九十两\d]+年|\blooking back\b|\bold diary\b|\bback in\b|\d+ (years?|months?)\b|"
    r"\bin college\b|\bdecade\b|\bused to\b|\byears? ago\b|"
    r"\bback (then|in)\b|\bwhen i was\b|\bas a (teen|kid|child)\b|\bin (high school|college)\b|\bonce\b)"
)
RESOLVED = re.compile(
    r"(现在[^。！？]{0,12}(好|稳定|幸福|很少|没有|不会|开心|正常|走出来|平静|期待)|"
    r"(状态|过得|生活|日子)(也)?(很|挺|都|比较)?(好|稳定|平静|幸福)|放下了|期待|分享|"
    r"\bdoing (great|well|fine|better|good)\b|\blook(ing)? forward\b|\bvolunteer|\bhow far\b|"
    r"\bsince\b|走出来|好起来|已经过去|挺过来|撑过来|"
    r"熬过来|康复|痊愈|戒掉|(已经|整整)[^。！？]{0,4}(年|个月)没(有)?|感谢|谢谢|庆幸|当了(心理)?咨询师|"
    r"\b(now|today) i'?m (ok|okay|fine|stable|happy|doing (well|great|ok))|\bclean for\b|\bfree\b|"
    r"\brecovered\b|\bglad\b|\bproud\b|\bgrateful\b|\bthankful\b|\bworked through\b|\bgot help\b|"
    r"\bhaven'?t (felt|had|done)\b|\bno longer\b|\bbetter now\b|\bhealed\b|\bsober\b)"
)
AGAIN = re.compile(
    r"(又开始|又来了|又回来|又想|现在又|最近又|再次|还是会|还是常常|还在想|停不下来|失望|其实没有|"
    r"\bagain\b|\bcoming back\b|\bstill (think|want|feel|have|wish)|\brelapsed?\b)"
)

_HYPERBOLE = [re.compile(p) for p in HYPERBOLE]


def blank(text: str) -> str:
    for rx in _HYPERBOLE:
        text = rx.sub(lambda m: " " * len(m.group(0)), text)
    return text


def denied(clause: str, start: int) -> bool:
    """A negator in the few words before `start` in the clause, with no 'but' after it."""
    width = 14 if CJK.search(clause[max(0, start - 4) : start + 2]) else 40
    before = clause[max(0, start - width) : start]
    if before.endswith("不"):
        return True
    neg = list(NEGATOR.finditer(before))
    if not neg:
        return False
    return not BUT.search(before[neg[-1].end() :])


def quoted(clause: str, start: int) -> bool:
    """The match stands inside quotation marks (reported speech, a title)."""
    before = clause[:start]
    return (
        before.count('"') % 2 == 1
        or before.count("“") > before.count("”")
        or (before.count("「") > before.count("」"))
    )


def someone_else(sentence: str, start: int, end: int, category: str) -> bool:
    """Someone other than the speaker is the subject: the nearest person word before the match
    (for self-harm, up to its end: "my sister might overdose"), or the match is reported speech."""
    upto = end if category == SUICIDE else start
    people = list(_PERSON.finditer(sentence[:upto]))
    if people and not _FIRST.fullmatch(people[-1].group(0)):
        return True
    return category == SUICIDE and bool(_REPORTED.search(sentence[:start]))


def speaker_absent(text: str) -> bool:
    """No first-person subject in the text (a request such as 请帮我 / "help me" does not count)."""
    return not _SUBJECT.search(_REQUEST.sub(" ", text))
