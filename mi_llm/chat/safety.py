"""Crisis screening of client messages (Chinese, simplified and traditional, and English).

    s = safety.screen("有时候我觉得我消失了对谁都好")
    s.flagged, s.category, s.construct, s.source   # True, "suicide_self_harm", "better_off_dead", ...

Three layers (docs/safety.md):

1. Rules (mi_llm.chat.safety_rules), one pattern set per construct: the C-SSRS screener's
   categories, PHQ-9 item 9, non-suicidal self-injury and harm to others, matched on normalised
   text (mi_llm.chat.safety_text: NFKC, zero-width characters, spaced characters, traditional to
   simplified, euphemisms and pinyin), cancelled by denial, another person as the subject,
   clinical/teaching/research/fiction contexts, past-and-resolved risk, hyperbole and jokes.
2. A learned layer (mi_llm.chat.safety_model): two regressions averaged, one over the embedded
   Gemma 3 270M's hidden states and one over character n-grams, trained on
   mi_llm/chat/data/crisis_train.jsonl (eight writers), shipped in the package.
3. The run's LLM as a second opinion (mi_llm.chat.safety_llm), when it is a remote model.

`screen(text)` (the chat's default) is layers 1 and 2: flagged when the learned layer's P(crisis)
reaches its threshold, or a lower one when a rule matches. The frozen test set
tests/data/crisis_test.jsonl measures it (`evaluate`, benchmarks/crisis_screen.py).
"""

from __future__ import annotations

from mi_llm.chat.referral import (  # noqa: F401  the referral, where the chat has always found it
    REFERRAL,
    language,
    referral,
    referral_config,
)
from mi_llm.chat.safety_eval import evaluate, unseen, wilson  # noqa: F401
from mi_llm.chat.safety_llm import LLM_PROMPT, parse_llm, screen_llm  # noqa: F401
from mi_llm.chat.safety_replies import (  # noqa: F401
    acknowledges,
    reply_report,
    write_reply_report,
)
from mi_llm.chat.safety_rules import CONSTRUCTS, HARM, SUICIDE  # noqa: F401
from mi_llm.chat.safety_screen import (  # noqa: F401
    CATEGORIES,
    LAYERS,
    Screen,
    combine,
    combine_layers,
    model_screens,
    rules_screen,
    screen,
    screen_many,
)
from mi_llm.chat.safety_train import NEGATIVE_CONTEXTS, read_set  # noqa: F401
