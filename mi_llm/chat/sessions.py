"""Saved chat sessions coded like the study: MITI for the counselor, change/sustain talk for the client.

    python -m mi_llm code-sessions runs/<name>/chat [--out runs/<name>/chat/coded]

Counselor turns are coded by stage 04's MITI coder (mi_llm.eval.miti, the run's `evaluation.miti`
settings and `llm` endpoint); the fixed referral replies of the crisis screen are not the model's
words and are not coded (they stay in the transcript the globals are rated on). Client turns are
coded change / sustain / neutral (mi_llm.eval.client_talk): English ones by the classifier trained on
AnnoMI, other languages by the LLM prompt (`client_coder="auto"`). Written to the output folder:

    miti_summary.csv     stage 04's summary columns per (model, variant) and definition of the chat
                         sessions, then AnnoMI's human references (high / low), both pooled and
                         per conversation, and the published MIBot figures (per conversation
                         only: means over its conversations), with change, sustain, neutral,
                         c_s (C:S) and pct_mi_consistent added
    miti_dialogues.csv   one row per session: MITI counts and scores, client counts and C:S
    miti_codes.jsonl     every coded counselor utterance;  client_codes.jsonl: every client turn
    client_coder.csv     the client classifier on held-out AnnoMI recordings, one row per split
                         (kappa and its CI, accuracy beside the majority class's)
    client_coder_splits.csv  over the five splits: kappa's mean and range, mean accuracies
    summary.png          R:Q and C:S of the sessions beside the references, per conversation
                         (the definition MIBot's published figures use)
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pandas as pd

from mi_llm import stages
from mi_llm.chat import safety, serving, store
from mi_llm.eval import client_talk, miti, miti_check, miti_summary, references
from mi_llm.llm import cache

EXTRA_COLUMNS = [
    "change",
    "sustain",
    "neutral",
    "c_s",
    "pct_mi_consistent",
    "n_referrals",
    "source",
    "what",
]


def units(dialogues) -> list[dict]:
    """MITI units of chat sessions: every counselor turn but the crisis referrals is cut into its
    utterances (mi_llm.eval.segment) and coded; a referral stays in the transcript, uncoded."""
    out = []
    for d in dialogues:
        unit = {
            "model": d.meta.get("model", "?"),
            "variant": d.meta.get("variant", "?"),
            "dialogue_id": d.id,
            "topic": None,
            "turns": [],
            "utterances": [],
        }
        history = []
        for t in d.turns:
            if t.speaker == "counselor" and not t.annotations.get("referral"):
                miti.add_reply(unit, t.text, list(history))
            else:
                unit["turns"].append({"speaker": t.speaker, "text": t.text})
            history.append({"speaker": t.speaker, "text": t.text})
        out.append(unit)
    return out


def client_turns(dialogues) -> list[dict]:
    """Every client turn with the counselor's turn before it and its language."""
    rows = []
    for d in dialogues:
        prev = ""
        for i, t in enumerate(d.turns):
            if t.speaker == "counselor":
                prev = t.text
                continue
            rows.append(
                {
                    "dialogue_id": d.id,
                    "model": d.meta.get("model", "?"),
                    "variant": d.meta.get("variant", "?"),
                    "turn": i,
                    "text": t.text,
                    "previous": prev,
                    "language": safety.language(t.text),
                }
            )
    return rows


def code_clients(rows: list[dict], ep, P, client_coder: str = "auto", classifier=None) -> None:
    """Set each row's `code` (change | sustain | neutral | None) and `coder`, in place."""
    if client_coder not in ("auto", "classifier", "llm"):
        raise ValueError(f"client_coder {client_coder!r}: auto, classifier or llm")
    by_clf = [
        r
        for r in rows
        if client_coder == "classifier" or (client_coder == "auto" and r["language"] == "en")
    ]
    by_llm = [r for r in rows if r not in by_clf]
    if by_clf:
        for r, y in zip(
            by_clf,
            client_talk.predict(
                classifier, [r["text"] for r in by_clf], [r["previous"] for r in by_clf]
            ),
        ):
            r.update(code=y, coder="classifier")
    if by_llm:
        codes = client_talk.code_llm(
            ep,
            [r["text"] for r in by_llm],
            [r["previous"] for r in by_llm],
            P.llm,
            cache_path=cache.cache_path(P),
        )
        for r, y in zip(by_llm, codes):
            r.update(code=y, coder="llm")


def _client_counts(rows: list[dict]) -> dict:
    n = {lab: sum(r.get("code") == lab for r in rows) for lab in client_talk.LABELS}
    return {**n, "c_s": client_talk.cs_ratio(n["change"], n["sustain"])}


# MISC's %MI-consistent (AutoMISC, MIBot) counts reflections, affirmations, emphasising control,
# advice with permission (and open questions) against MI-inconsistent codes. MITI 4.2.1 does not tell
# open from closed questions, so questions are left out of both sides here.
MI_CONSISTENT = ("SR", "CR", "AF", "SEEK", "AUTO", "PERSUADE_PERM")
MI_INCONSISTENT = ("PERSUADE", "CONFRONT")


def pct_mi_consistent(counts) -> float:
    """MI-consistent / (MI-consistent + MI-inconsistent) counselor codes; nan when none."""
    a = sum(float(counts[k]) for k in MI_CONSISTENT)
    b = sum(float(counts[k]) for k in MI_INCONSISTENT)
    return a / (a + b) if a + b > 0 else math.nan


def tables(
    dialogues, coded_units: list[dict], client_rows: list[dict], annomi_path, bootstrap=1000, seed=0
) -> tuple:
    """(summary, per_session): the chat rows, then AnnoMI's human references, each pooled and per
    conversation (column `definition`), then the published ones (per conversation)."""
    per = miti.dialogue_table(coded_units)
    extra = []
    for d in dialogues:
        rows = [r for r in client_rows if r["dialogue_id"] == d.id]
        extra.append(
            {
                "dialogue_id": d.id,
                **_client_counts(rows),
                "n_referrals": sum(bool(t.annotations.get("referral")) for t in d.turns),
                "started": d.meta.get("started"),
                "adapter_sha256": d.meta.get("adapter_sha256"),
            }
        )
    per = per.merge(pd.DataFrame(extra), on="dialogue_id", how="left")
    per["pct_mi_consistent"] = per.apply(pct_mi_consistent, axis=1)
    chat_rows = miti_summary.group_summary(per, "chat", bootstrap, seed)
    for i, r in chat_rows.iterrows():
        d = per[(per["model"] == r["model"]) & (per["variant"] == r["variant"])]
        rows = [c for c in client_rows if c["model"] == r["model"] and c["variant"] == r["variant"]]
        counts = _client_counts(rows)
        chat_rows.loc[i, ["change", "sustain", "neutral"]] = [counts[k] for k in client_talk.LABELS]
        if r["definition"] == "pooled":
            chat_rows.loc[i, "c_s"] = counts["c_s"]
            chat_rows.loc[i, "pct_mi_consistent"] = pct_mi_consistent(d[list(miti.CODES)].sum())
        else:  # the mean over the sessions where it is defined
            chat_rows.loc[i, "c_s"] = d["c_s"].mean()
            chat_rows.loc[i, "pct_mi_consistent"] = d["pct_mi_consistent"].mean()
        chat_rows.loc[i, "n_referrals"] = d["n_referrals"].sum()
        chat_rows.loc[i, "source"] = "chat sessions (this run)"
    annomi = miti_check.read_annomi(annomi_path)
    ref = miti_check.annomi_reference(annomi, bootstrap, seed)
    human = client_talk.reference(client_talk.annomi_client(annomi_path))
    human = human.set_index(["variant", "definition"])
    for i, r in ref.iterrows():
        h = human.loc[(r["variant"], r["definition"])]
        ref.loc[i, ["change", "sustain", "neutral", "c_s"]] = [
            h["change"],
            h["sustain"],
            h["neutral"],
            h["c_s"],
        ]
        ref.loc[i, "source"] = "AnnoMI human labels (computed from data/AnnoMI)"
    pub = references.table().rename(columns={"n_sessions": "n_dialogues"})
    summary = pd.concat([chat_rows, ref, pub], ignore_index=True)
    summary["what"] = summary["what"].fillna(summary["definition"].map(miti.DEFINITIONS))
    cols = miti.SUMMARY_COLUMNS + [c for c in EXTRA_COLUMNS if c not in miti.SUMMARY_COLUMNS]
    return summary[cols], per


def figure(summary: pd.DataFrame, file) -> Path:
    """R:Q and C:S of the chat sessions beside AnnoMI (high / low) and MIBot, all as means over
    conversations: MIBot's published figures are, so the others are shown in that definition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary[summary["definition"] == "per_conversation"]
    names = [f"{m}\n{v}" for m, v in zip(summary["model"], summary["variant"])]
    colors = {"chat": "#3a78c2", "reference": "#8c8c8c", "published": "#c27a3a"}
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.3 * len(names) * 2), 3.6))
    for ax, col, title in zip(axes, ["r_q", "c_s"], ["R:Q (counselor)", "C:S (client)"]):
        values = pd.to_numeric(summary[col], errors="coerce")
        ax.bar(names, values.fillna(0), color=[colors.get(g, "#555") for g in summary["group"]])
        for x, v in enumerate(values):
            ax.text(
                x,
                (0 if math.isnan(v) else v) + 0.03,
                "n/a" if math.isnan(v) else f"{v:.2f}",
                ha="center",
                fontsize=8,
            )
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(
        "Means over conversations: chat sessions (blue) vs AnnoMI human labels (grey) and "
        "MIBot, published (orange)",
        fontsize=9,
    )
    fig.tight_layout()
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=150)
    plt.close(fig)
    return file


def code_sessions(
    folder, out=None, endpoint=None, client_coder: str = "auto", validate: bool = True, P=None
) -> dict:
    """Code a run's chat sessions (runs/<name>/chat); write the tables, the codes and the figure.

    Opens the run's llm endpoint (the embedded model by default) unless one is given.
    """
    from mi_llm.llm import api, prompts
    from mi_llm.params import path

    folder = Path(folder)
    out = Path(out) if out else folder / "coded"
    out.mkdir(parents=True, exist_ok=True)
    P = P or serving.run_params(folder.parent)
    cfg = P.evaluation.miti
    dialogues = store.read_sessions(folder)
    coded, clients = units(dialogues), client_turns(dialogues)
    annomi_path = path(cfg.annomi_path)
    annomi_client = client_talk.annomi_client(annomi_path)
    classifier = client_talk.fit(annomi_client, seed=P.seed) if client_coder != "llm" else None
    opened = contextlib.nullcontext(endpoint) if endpoint is not None else api.endpoint(P.llm)
    with opened as ep:
        usage = miti.code_units(ep, coded, P, cfg, rate_globals=cfg.rate_globals)
        code_clients(clients, ep, P, client_coder, classifier)
    summary, per = tables(dialogues, coded, clients, annomi_path, P.evaluation.bootstrap, P.seed)
    version = prompts.name(cfg.prompt_version)
    with open(out / stages.file_name(stages.MITI_CODES), "w", encoding="utf-8") as f:
        f.writelines(
            json.dumps({**u, "prompt_version": version}, ensure_ascii=False) + "\n" for u in coded
        )
    with open(out / "client_codes.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in clients)
    summary.to_csv(out / "miti_summary.csv", index=False)
    per.to_csv(out / "miti_dialogues.csv", index=False)
    check = None
    if validate and client_coder != "llm":
        check, across = client_talk.validate_splits(
            annomi_client, n_splits=5, seed=P.seed, bootstrap=P.evaluation.bootstrap
        )  # kappa moves between splits: five of them, mean and range
        check.to_csv(out / "client_coder.csv", index=False)
        pd.DataFrame([across]).to_csv(out / "client_coder_splits.csv", index=False)
    fig = figure(summary, out / "summary.png")
    return {
        "summary": summary,
        "per_session": per,
        "client_coder": check,
        "usage": usage,
        "figure": fig,
        "out": out,
    }


def main(folder, out=None) -> None:
    """The `python -m mi_llm code-sessions` command."""
    res = code_sessions(folder, out)
    cols = [
        "group",
        "model",
        "variant",
        "definition",
        "r_q",
        "pct_cr",
        "pct_mi_consistent",
        "c_s",
        "change",
        "sustain",
        "n_dialogues",
    ]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(res["summary"][cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        if res["client_coder"] is not None:
            print(
                res["client_coder"][
                    [
                        "coder",
                        "split",
                        "test_recordings",
                        "kappa",
                        "kappa_ci_low",
                        "kappa_ci_high",
                        "accuracy",
                        "majority_accuracy",
                        "macro_f1",
                    ]
                ].to_string(index=False)
            )
    print(f"written to {res['out']}/")
