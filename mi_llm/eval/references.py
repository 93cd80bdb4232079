"""Published reference figures shown beside our own results: the one home of numbers we cite.

Figures computed from data we ship (AnnoMI's human labels) are not typed in here: mi_llm.eval.client_talk
and mi_llm.eval.miti compute them. Each entry: where it comes from, what its columns mean and its
definition (pooled | per_conversation, mi_llm.eval.miti.DEFINITIONS): a published figure is shown only
beside our rows of the same definition.
"""

from __future__ import annotations

import pandas as pd

REFERENCES = [
    {
        "group": "published",
        "model": "mibot",
        "variant": "gpt-4o",
        "source": "Mahmood et al., Findings of ACL 2025 (MIBot; data: github.com/zaffnet/MIBOT_ACL2025, "
        "CC BY-SA 4.0)",
        "what": "GPT-4o MI chatbot, 106 real conversations with smokers, coded by AutoMISC; "
        "means per conversation",
        "definition": "per_conversation",  # shown only beside rows of the same definition
        "n_sessions": 106,
        "r_q": 1.27,  # reflections per question
        "pct_mi_consistent": 0.94,  # MI-consistent / (MI-consistent + MI-inconsistent) counselor codes
        "c_s": 2.43,  # client change talk per sustain talk
    },
]


def table() -> pd.DataFrame:
    """The published references as rows (group, model, variant, source, figures)."""
    return pd.DataFrame(REFERENCES)
