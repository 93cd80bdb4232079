"""The OpenAI Batch API path of llm.complete(..., batch_dir=...): half price, answers within 24 h.

The uncached requests of one attempt go into one batch; its id is stored in <batch_dir>/attemptN/
batch.json, so a re-run after a crash polls the same batch instead of paying for a new one. Every
successful line lands in the llm answer cache; the live pass of llm.complete then reads them from
there and answers the failed lines itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
from tqdm.auto import tqdm

from mi_llm.llm.cache import Answer, Cache, cache_key
from mi_llm.runs import write_atomic


def run_batch(ep, todo, llm_params, cache: Cache, settings: dict, state_dir: Path) -> None:
    """Answer the uncached requests through the Batch API into the cache; resumable by stored batch id."""
    missing = {}
    for req, _, attempt in todo:
        key = cache_key(ep.model, settings, req.messages, attempt)
        if cache.get(key) is None:
            missing[key] = req
    if not missing:
        return
    client = openai.OpenAI(
        base_url=ep.base_url,
        api_key=ep.api_key,
        max_retries=llm_params.max_retries,
        timeout=llm_params.request_timeout,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    state = (
        state_dir / "batch.json"
    )  # the batch id on disk: a re-run polls it instead of resubmitting
    if state.exists():
        batch_id = json.loads(state.read_text())["id"]
    else:
        lines = [
            json.dumps(
                {
                    "custom_id": k,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": ep.model, "messages": q.messages, **settings},
                },
                ensure_ascii=False,
            )
            for k, q in missing.items()
        ]
        write_atomic(state_dir / "input.jsonl", "\n".join(lines) + "\n")
        with open(state_dir / "input.jsonl", "rb") as fh:
            f = client.files.create(file=fh, purpose="batch")
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch_id = b.id
        write_atomic(state, json.dumps({"id": batch_id, "input_file_id": f.id, "n": len(missing)}))
    _ingest(client, _poll(client, batch_id, llm_params.batch_poll_s), missing, ep.model, cache)


def _poll(client, batch_id: str, poll_s: float):
    with tqdm(desc=f"batch {batch_id}", unit="poll") as bar:
        while True:
            b = client.batches.retrieve(batch_id)
            bar.set_postfix_str(b.status)
            bar.update()
            if b.status in ("completed", "failed", "expired", "cancelled"):
                return b
            time.sleep(poll_s)


def _ingest(client, b, missing: dict, model: str, cache: Cache) -> None:
    """Store every successful line of a finished batch; failed lines are left to the live pass."""
    if not b.output_file_id:
        tqdm.write(f"[mi_llm] batch {b.id} ended {b.status} without output; answering live instead")
        return
    for line in client.files.content(b.output_file_id).text.splitlines():
        item = json.loads(line) if line.strip() else None
        resp = (item or {}).get("response") or {}
        if item is None or item["custom_id"] not in missing or resp.get("status_code") != 200:
            continue
        body = resp["body"]
        choice, usage = body["choices"][0], body.get("usage") or {}
        cache.put(
            item["custom_id"],
            missing[item["custom_id"]].key,
            model,
            Answer(
                choice["message"].get("content") or "",
                choice.get("finish_reason") or "stop",
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
            ),
        )
