"""The crisis screen under its short name; it lives in mi_llm.chat.safety (docs/safety.md).

from mi_llm import safety
s = safety.screen("我不想活了")
s.flagged, s.category, s.construct   # True, "suicide_self_harm", ...
"""

from __future__ import annotations

from mi_llm.chat.safety import (  # noqa: F401
    CATEGORIES,
    CONSTRUCTS,
    HARM,
    NEGATIVE_CONTEXTS,
    SUICIDE,
    Screen,
    evaluate,
    model_screens,
    read_set,
    referral,
    rules_screen,
    screen,
    screen_llm,
    screen_many,
    unseen,
    wilson,
)
