"""The crisis screen's rules: one pattern set per construct, and the contexts that cancel a match.

Every rule names the construct it detects (`CONSTRUCTS`): the C-SSRS screener's categories (wish to
be dead, non-specific active thoughts, method, intent, plan, preparatory acts, past attempt), PHQ-9
item 9 (better off dead), non-suicidal self-injury, and harm to others. Patterns are written for the
normalised text (mi_llm.chat.safety_text: simplified characters, lower case, euphemisms and pinyin
rewritten), in Chinese and English, as first-person statements.

A match counts unless its clause says otherwise:
- denial: a negator shortly before it in the same clause (我没有想自杀, "I don't want to die"),
  unless a "but" comes between;
- another person is the subject: the nearest person word before the match is a third person or
  a relative (我妈说她不想活了, "my friend wants to die");
- the message is clinical, teaching, research or fiction and the match is not explicitly "I"
  (患者有自伤风险, "a novel where the hero kills himself");
- past and resolved: a past marker and a recovery marker, and no sign that it is back
  (十年前想过轻生，现在很好);
- hyperbole and jokes: 累死了, 笑死, "killing me", "I'll kill him haha" are blanked before matching.
"""

from __future__ import annotations

import re

from mi_llm.chat.safety_context import (
    AGAIN,
    CONTEXT,
    JOKE,
    NOT_JOKE,
    PAST,
    RESOLVED,
    blank,
    denied,
    quoted,
    someone_else,
    speaker_absent,
)

SUICIDE, HARM = "suicide_self_harm", "harm_others"
CONSTRUCTS = {
    "wish_dead": SUICIDE,  # C-SSRS 1
    "active_thoughts": SUICIDE,  # C-SSRS 2
    "method": SUICIDE,  # C-SSRS 3
    "intent": SUICIDE,  # C-SSRS 4
    "plan": SUICIDE,  # C-SSRS 5
    "preparatory": SUICIDE,  # C-SSRS behaviour: preparatory acts
    "past_attempt": SUICIDE,  # C-SSRS behaviour: actual attempt
    "better_off_dead": SUICIDE,  # PHQ-9 item 9
    "self_injury": SUICIDE,  # non-suicidal self-injury
    "harm_others": HARM,
}

_DIE_ZH = r"(去死|死掉?|自杀|轻生|寻死|了结自己|结束(自己的?|我的)?生命|一了百了|离开这个世界|做傻事|想不开)"
_MEANS_ZH = (
    r"(跳楼|跳河|跳江|跳海|跳桥|跳下去|上吊|烧炭|卧轨|割腕|吞药|安眠药|农药|绳子|刀片|煤气|药)"
)
_DIE_EN = (
    r"(kill (myself|me)|end (it all|my (own )?life|it|things|myself)|take my (own )?life|"
    r"die|be dead|commit suicide|suicide|not (be )?(alive|here|around)|disappear (forever|for good))"
)
_MEANS_EN = (
    r"(pills?|overdos\w*|rope|noose|hang(ing)? myself|gun|jump(ing)? (off|from|in front)|bridge|"
    r"rooftop|roof|train|tracks|razor|blade|charcoal|drown\w*|the sea|wrists?)"
)
_TA = r"(他|她|他们|她们|那个人|那些人|那个\w{0,3}|老板|老师|同事|同学|室友|邻居|前男友|前女友|继父|后妈)"
_VICTIM_EN = (
    r"(him|her|them|that (guy|woman|man|bastard|teacher)|those (guys|people|kids)|everyone|"
    r"my (boss|teacher|ex|stepdad|stepfather|roommate|neighbou?r|coworker|classmates?|bully|bullies)|"
    r"the (kids|people|guys)|people)"
)

# (construct, pattern, explicit): explicit patterns carry "I/我" themselves and also count in
# clinical, teaching, research or fiction messages
RULES = [
    # wish to be dead
    (
        "wish_dead",
        (
            r"(不想|不愿意?|不打算)(再)?活|活不下去|活着(没|没有)(意思|意义)|活够了|"
            r"(希望|但愿|想)(自己)?(明天|明早|早上|一觉)?(不要?|再也不|别)?(醒|醒来|醒过来)|一睡不醒|"
            r"(想|希望|宁愿|巴不得)(自己)?(已经)?(死|消失|不存在|没出生)|想原地去世|还不如死"
        ),
        False,
    ),
    (
        "wish_dead",
        (
            r"\b(wish|wishing|hope|hoping) (that )?i (was|were|'d|would|could|wouldn't|won't|"
            r"don't|didn't|never)[^.!?]{0,12}(dead|die|wake up|born|exist|disappear)|"
            r"\b(want|wanted|wanting) to (die|be dead|disappear forever|stop existing|not exist|not wake up)|"
            r"\b(don't|do not|no longer) want to (be alive|live|exist|be here|wake up|keep living|go on)|"
            r"\bnot (want|wanting) to (live|exist|be here)|\bready to die\b|\bwould rather be dead\b|"
            r"\bsleep forever\b|\btired of (living|being alive|existing)\b"
        ),
        True,
    ),
    # non-specific active suicidal thoughts
    (
        "active_thoughts",
        (
            r"(想|想要|想过|在想|考虑|念头|冲动).{0,6}(自杀|轻生|寻死|了结自己|结束(自己的?|我的)?生命|一了百了|"
            r"做傻事|去死|死了算了|离开这个世界|杀了?自己|想不开)|自杀的(念头|想法|冲动)|没有自杀的勇气|"
            r"(死了算了|一死了之|去死算了|不如死了)"
        ),
        False,
    ),
    (
        "active_thoughts",
        (
            r"\b(think|thinking|thought|thoughts|considering|urges?) (about|of) "
            r"(killing myself|suicide|ending (it|my life|things)|taking my (own )?life|dying)|"
            r"\bsuicidal (thoughts|again|lately|today|tonight)|\bi('m| am) (feeling )?(so |really |pretty )?suicidal|"
            r"\bi (want|need) to (kill myself|end it|end my life|end things)|\bwant to end (it|my life)"
        ),
        True,
    ),
    # method
    (
        "method",
        r"(想|想过|想着|查|搜|研究|算)[^。！？]{0,12}" + _MEANS_ZH + r"|"
        r"(从|在)[^。！？]{0,10}(跳下去|跳下|一跃)|站在[^。！？]{0,10}(边|上)[^。！？]{0,8}(跳|掉下去)|"
        r"(多少|几)(片|颗|粒)[^。！？]{0,6}(会死|致死|够)|怎么死|(怎样|怎么|如何)(自杀|死|结束生命)",
        False,
    ),
    (
        "method",
        r"\b(how many|how much)[^.!?]{0,20}(would|to) (kill|take|be enough)|"
        r"\b(lethal|fatal) dose\b|\bpainless (way|ways) to die|\b(ways|way|how) to (kill myself|die|end it)|"
        r"\bi (keep )?(think|thinking|thought|picture|picturing|imagine|imagining)[^.!?]{0,30}"
        + _MEANS_EN,
        True,
    ),
    # intent
    (
        "intent",
        r"(我|就)?(要|会|准备|决定|打算)[^。！？，,]{0,4}"
        + _DIE_ZH
        + r"|今晚.{0,4}(就|要)?(结束|走了)|"
        r"不会再(醒|回来)|我决定了",
        False,
    ),
    (
        "intent",
        (
            r"\bi('m| am|'ll| will| have decided to| decided to)( going to| gonna)? "
            r"(kill myself|end (it|my life|things|myself)|do it|take my (own )?life)|"
            r"\b(tonight|today|this week)('s| is) the night\b|\bgoing to (kill myself|end it|end my life)"
        ),
        True,
    ),
    # plan
    (
        "plan",
        r"(计划|打算|准备|决定|定好|想好|安排好)[^。！？]{0,12}("
        + _MEANS_ZH[1:-1]
        + r"|自杀|死|结束)|"
        r"(等|趁)[^。！？]{0,12}(就|然后)[^。！？]{0,6}(跳|吃|割|死|结束)|"
        r"(周|星期|号|点|晚上)[^。！？]{0,10}(就|去)[^。！？]{0,4}(跳|吞|烧炭|上吊|结束)",
        False,
    ),
    (
        "plan",
        (
            r"\b(plan|planned|planning|picked|chose|set) (a date|the date|the day|when|where|how)\b|"
            r"\bmy plan (is|to)\b|\b(on|this|next) (friday|saturday|sunday|monday|tuesday|wednesday|thursday|"
            r"weekend)[^.!?]{0,30}(kill|end|jump|hang|overdose|take)|"
            r"\b(when|after|once)[^.!?]{0,30}(i'?m going to|i'?ll)[^.!?]{0,12}"
            r"(kill|end|jump|hang|overdose|take (the|all))"
        ),
        True,
    ),
    # preparatory acts
    (
        "preparatory",
        (
            r"(遗书|遗言|后事)|(攒|囤|存)(了|够|下)?[^。！？]{0,8}(药|安眠药)|"
            r"(买|备|准备)(了|好)[^。！？]{0,6}(绳子|炭|刀片|农药|安眠药|药)|"
            r"(送人|送给|托付|转给|交代)[^。！？]{0,16}(用不上|不需要|不会回|以后|再见|告别)|"
            r"(最后|好好)(一次)?(告别|说再见)|(替我|帮我)照顾"
        ),
        False,
    ),
    (
        "preparatory",
        (
            r"\b(suicide|goodbye|farewell) (note|letter)s?\b|\bwrote (a|my|the) note\b|"
            r"\b(bought|got|saving|saved|stockpiling|hoarding|collecting) (up )?(a |the |some |my )?"
            r"(rope|noose|pills|charcoal|blades?|gun)\b|"
            r"\bgiv(e|ing) (away )?(my|all my|away my) (things|stuff|belongings|cat|dog|pets?)\b|"
            r"\b(won't|will not) (need|be back|be around)|\bsaying (my )?goodbyes?\b|\bthis is goodbye\b"
        ),
        True,
    ),
    # past attempt
    (
        "past_attempt",
        (
            r"自杀未遂|(自杀|轻生|寻死)(过|了一次|没成功|没死成)|"
            r"(试过|尝试过|差点)[^。！？]{0,6}(自杀|跳|上吊|烧炭|割腕|吞药|结束)|洗胃|"
            r"(吞|吃)了(一|整)(瓶|盒|把)[^。！？]{0,4}药|上吊过|割过腕|跳过楼|烧过炭"
        ),
        False,
    ),
    (
        "past_attempt",
        (
            r"\b(i |i've |i have )?(attempted|tried to (kill myself|end it|end my life|"
            r"hang myself|overdose|die))|\bsurvived (a|my|an|the) (suicide )?attempt|\b(i )?overdosed\b|"
            r"\bsuicide attempt\b|\b(after|since) my (attempt|overdose)\b"
        ),
        True,
    ),
    # better off dead (PHQ-9 item 9)
    (
        "better_off_dead",
        (
            r"(没有我|少了我|我不在|我死了|我消失)[^。！？]{0,12}(更好|轻松|开心|解脱|不会难过|没人)|"
            r"(我|自己)(就)?是[^。！？]{0,6}(负担|累赘|拖累)|不想再?拖累|消失了?(对谁都好|也没人)"
        ),
        False,
    ),
    (
        "better_off_dead",
        (
            r"\bbetter off (dead|without me)|\b(be|were) better if i (was|were|wasn't|weren't)|"
            r"\b(burden|a burden) (to|on) (everyone|them|my)|\bno one would (miss|notice|care)|"
            r"\bi'?m (just )?a burden\b|\bwouldn't miss me\b"
        ),
        True,
    ),
    # non-suicidal self-injury
    (
        "self_injury",
        (
            r"自残|自伤|伤害自己|(划|割|烫|烧|扎|咬|抓|打|掐|撞)(了|伤|破|过|几道|几刀)?(自己|我自己|手|手臂|手腕|大腿|胳膊)|"
            r"(刀片|烟头|打火机|圆规|小刀)[^。！？]{0,10}(划|割|烫|烧|扎)|(惩罚|伤)自己|"
            r"(又|还是)(划|割)了|故意[^。！？]{0,8}(流血|出血|疼|受伤)|让自己(疼|痛|流血)"
        ),
        False,
    ),
    (
        "self_injury",
        (
            r"\b(cut|cutting|burn|burning|burned|hurt|hurting|harm|harming|scratch|scratching|"
            r"punch|punching|hit|hitting|carve|carving|bite|biting) (myself|into my|my (arms?|wrists?|legs?|"
            r"thighs?|skin|stomach|hands?))\b|\bself[- ]?harm|\bsh urges?\b|\bi (cut|burn) again\b|"
            r"\bthe cuts\b|\buntil (i|it) bleed|\bfeel the pain\b"
        ),
        True,
    ),
    # harm to others
    (
        "harm_others",
        r"(杀了?|弄死|打死|捅死|掐死|砍死|毒死|撞死|宰了|捅|砍|毒)" + _TA + r"|"
        r"(想|要|打算|准备|会)[^。！？]{0,6}((?<!自)杀(?!时间)|捅|砍|揍|报复|弄死|推下去|伤害(?!自己))|"
        r"(下毒|投毒|放火|纵火|带刀|拿刀|买了(一把)?刀)|付出代价|要(他|她|他们)的命",
        False,
    ),
    (
        "harm_others",
        r"\b(kill|killing|stab|stabbing|strangle|shoot|shooting|poison|poisoning|beat|"
        r"beating|hurt|hurting|end|run over|burn) " + _VICTIM_EN + r"\b|"
        r"\bshoot up\b|\bmake (them|him|her|everyone) (all )?pay\b|\bbring(ing)? a (knife|gun) to\b|"
        r"\bsmash (his|her|their) (head|face)\b",
        True,
    ),
    # broader wordings, one construct each
    (
        "wish_dead",
        (
            r"(不要|别|不会|再也不)(让我)?(再)?(醒|醒来|醒过来)|睡过去再也不|(消失|没出生|死掉|死了)(就好了|反而轻松|也好)|"
            r"宁愿(没有|不)(活|出生)|不想(再)?醒"
        ),
        False,
    ),
    (
        "wish_dead",
        (
            r"\b(not|never) (to )?wake up\b|\bdisappointed (that )?i woke up\b|\blet me (not|never) wake\b|"
            r"\bwish i could (just )?(go to sleep|sleep|stop|not exist|be)\b"
        ),
        True,
    ),
    (
        "active_thoughts",
        r"(自我了断|了结(自己|掉)|把自己了结|结束(这一切|自己的命)|杀了?自己)",
        False,
    ),
    (
        "active_thoughts",
        (
            r"\b(taking|take|end|ending) my (own )?life\b|\bsui(cidal)? thoughts\b|"
            r"\bfeel(ing)? suicidal\b"
        ),
        True,
    ),
    ("intent", r"决定[^。！？]{0,4}(走了|结束|动手)|一定会动手|不会再回头|就要结束", False),
    (
        "intent",
        r"\b(will|going to|decided to|i'?ll) (be )?(kill(ing)? myself|end(ing)? (my life|it|things))",
        True,
    ),
    (
        "better_off_dead",
        (
            r"(如果|要是)?我(死了|走了|不在了?|没出生|消失了?)[^。！？]{0,16}(好|解脱|自由|太平|重新开始|不用|轻松|省心)|"
            r"拖油瓶|浪费别人|少了我一个"
        ),
        False,
    ),
    (
        "better_off_dead",
        (
            r"\b(better|happier|freer|relieved|easier)( off)?[^.!?]{0,20}(without me|if i (was|were)(n't| not| gone)|"
            r"if i (just )?(died|disappeared|wasn't (here|around)))|\b(wouldn't|won't|would not) (even )?miss me\b|"
            r"\bbetter without me\b|\bmaking things worse for everyone\b|\bif i was gone\b"
        ),
        True,
    ),
    (
        "method",
        (
            r"(想象|浮现|盯着|往下看|想说|想过|想着|在想)[^。！？]{0,16}(跳|吞|冲下去|沉下去|撞|这个高度|够了|死法)|"
            r"死法|哪种死"
        ),
        False,
    ),
    (
        "method",
        (
            r"\b(thinking|thought|picture|picturing|wonder|wondering|imagine|imagining)\b[^.!?]{0,40}"
            r"(jump|pills|rope|driving|walking into|the sea|overdos|enough|tracks|train)"
        ),
        True,
    ),
    (
        "plan",
        (
            r"(选好|想好|计划好|安排好|定好|写好了时间)[^。！？]{0,12}(地方|地点|时间|日子|那天|怎么做)|"
            r"(地点|时间)[^。！？]{0,4}(选好|定好)|月底那天|那天[^。！？]{0,10}(动手|跳|结束)"
        ),
        False,
    ),
    (
        "plan",
        (
            r"\b(plan is|planned to|planning to|going to)[^.!?]{0,20}(jump|overdose|hang|pills|end|kill)|"
            r"\bthat'?s when i'?m (ending|going to end|doing) it\b"
        ),
        True,
    ),
    (
        "preparatory",
        (
            r"写了?[^。！？]{0,8}信[^。！？]{0,12}(等我走了|我走了|不在了|以后)|(说了|跟[^。！？]{0,8}说)再见|"
            r"最后一次(跟人)?(聊天|说话|见)|密码[^。！？]{0,12}(留给|告诉|写在)|(用不着|用不上)了"
        ),
        False,
    ),
    (
        "preparatory",
        (
            r"\b(paid off|wrote|writing|finished writing|written) [^.!?]{0,20}(debts|letters?|notes?)\b|"
            r"\blast (message|thing on my list)\b|\bnote'?s on my\b|\bnew home\b|\bsaid goodbye\b|"
            r"\bwhen i'?m (dead|gone)\b|\bafter i'?m gone\b"
        ),
        True,
    ),
    (
        "self_injury",
        r"(撞墙|撞到流血|捏自己|搥自己|捶自己|掐自己|扎自己|打自己|咬自己)|手臂上的伤|割手|划了几道",
        False,
    ),
    (
        "self_injury",
        (
            r"\b(punch|punching|bang|banging|hit|hitting) (walls?|my head)\b|\btill (they|it) bled\b|"
            r"\bwhat i do to my (arms?|legs?|body)\b|\brelapsed on self-harm\b|\bhide (the|my) (cuts|scars)\b"
        ),
        True,
    ),
    ("past_attempt", r"被救回来|送(进|去)(医院|急诊)[^。！？]{0,6}(洗胃|抢救)|icu|抢救过来", False),
    (
        "past_attempt",
        (
            r"\b(my|an|the) (first |last |second )?attempt (was|at|last)|\bhad an attempt\b|"
            r"\b(jumped|took|swallowed)[^.!?]{0,30}(once|before|and lived|hoping not to wake)"
        ),
        True,
    ),
    (
        "harm_others",
        (
            r"下药|让(他|她|他们)[^。！？]{0,6}(醒不过来|死|好看|住院|付出)|划(他|她)(们)?的脸|打到住院|撞死那群人|"
            r"怎么让(他|她)死"
        ),
        False,
    ),
    (
        "harm_others",
        (
            r"\bbreak (his|her|their) (legs|arms|neck)\b|\bmake (him|her|them) bleed\b|"
            r"\bi know where (he|she|they) lives?\b|\bgoing to (his|her|their) (place|house)\b[^.!?]{0,20}(break|hurt|kill)"
        ),
        True,
    ),
]

_COMPILED = [(c, re.compile(p), explicit) for c, p, explicit in RULES]
_CLAUSE = re.compile(r"[^。！？!?；;\n，,]+")
_SENTENCE = re.compile(r"[^。！？!?；;\n]+")


def matches(norm: str, cancelled: bool = False) -> list[dict]:
    """Every rule match in a normalised message that no context cancels, in text order:
    dicts with construct, category, start, end (offsets in `norm`), explicit. With
    cancelled=True, the matches that a context cancels instead (with the context's name in
    `cancelled_by`)."""
    masked = blank(norm)
    joking = bool(JOKE.search(norm)) and not NOT_JOKE.search(norm)
    context = bool(CONTEXT.search(norm))
    resolved = bool(PAST.search(norm) and RESOLVED.search(norm)) and not AGAIN.search(
        RESOLVED.sub(" ", norm)
    )
    out = []
    for sm in _SENTENCE.finditer(masked):
        sentence, s0 = sm.group(0), sm.start()
        for cm in _CLAUSE.finditer(sentence):
            clause, c0 = cm.group(0), cm.start()
            for construct, rx, explicit in _COMPILED:
                for m in rx.finditer(clause):
                    category = CONSTRUCTS[construct]
                    a = c0 + m.start()
                    if denied(clause, m.start()):
                        by = "negation"
                    elif someone_else(sentence, a, a + len(m.group(0)), category):
                        by = "someone_else"
                    elif context and (
                        quoted(clause, m.start()) or speaker_absent(clause[: m.end()])
                    ):
                        by = "context"
                    elif joking and (
                        category == HARM or construct in ("wish_dead", "active_thoughts")
                    ):
                        by = "joke"
                    elif resolved:
                        by = "past_resolved"
                    else:
                        by = None
                    if (by is not None) != cancelled:
                        continue
                    a += s0
                    hit = {
                        "construct": construct,
                        "category": category,
                        "start": a,
                        "end": a + len(m.group(0)),
                        "explicit": explicit,
                    }
                    out.append({**hit, "cancelled_by": by} if cancelled else hit)
    return sorted(out, key=lambda d: d["start"])
