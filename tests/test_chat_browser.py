"""The chat end to end: a tiny model with a merged LoRA adapter served by `transformers serve`, the
chat in front, a person typing into the page in headless Chromium (Debian's package), the session
saved; Chromium is driven through its DevTools protocol (websocket-client, already a dependency)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import pytest
from conftest import make_run

from mi_llm.chat import safety, web
from mi_llm.data.schema import Dialogue

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow  # ~80 s on 2 busy cores: model merge, transformers serve, Chromium


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, url: str, profile):
        import websocket

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, t0 = profile / "DevToolsActivePort", time.monotonic()
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() - t0 > 60 or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(
            tab["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self.n = 0

    def send(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def wait(self, expression: str, timeout: float = 120):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        status = self.js("document.getElementById('status').textContent")
        raise TimeoutError(f"page: {expression} stayed false for {timeout} s; status: {status}")

    def type_and_enter(self, text: str):
        self.js("document.getElementById('input').focus()")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_type_in_the_page_see_the_reply_and_the_saved_session(
    tiny_model_dir,
    tiny_adapter,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("MI_LLM_CACHE", str(tmp_path / "cache"))  # the merged folder goes here
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with web.serve(run, max_tokens=12) as c:
        merged = c.served.folder
        assert merged.parent == tmp_path / "cache" / "merged" and (merged / "config.json").exists()
        assert (
            json.loads((merged / "mi_llm_merged.json").read_text())["adapter_sha256"]
            == c.served.adapter_sha256
        )
        page = Page(c.url + "/", tmp_path / "profile")
        try:
            page.wait("document.readyState === 'complete' && !!document.getElementById('input')")
            page.type_and_enter("我想戒烟，可是压力一大就想抽。")
            page.wait("document.querySelectorAll('.msg.counselor:not(.pending)').length === 1")
            reply = page.js("document.querySelector('.msg.counselor').textContent")
            sid = page.wait("document.getElementById('status').dataset.session")
            page.type_and_enter("说实话，我觉得我消失了对谁都好。")
            page.wait("document.querySelectorAll('.msg.counselor:not(.pending)').length === 2")
            referral = page.js("document.querySelectorAll('.msg.counselor')[1].textContent")
            assert page.js("document.querySelectorAll('.msg.referral').length") == 1
            status = page.js("document.getElementById('status').textContent")
        finally:
            page.close()
    assert reply.strip() and referral == safety.referral("zh")
    file = run / "chat" / f"{sid}.jsonl"
    assert status == f"session saved: {file}"
    d = Dialogue.from_dict(json.loads(file.read_text(encoding="utf-8")))
    assert [t.text for t in d.turns] == [
        "我想戒烟，可是压力一大就想抽。",
        reply,
        "说实话，我觉得我消失了对谁都好。",
        referral,
    ]
    assert (
        d.meta["served_folder"] == str(merged)
        and "消失了对谁都好" in d.meta["events"][0]["evidence"]
    )
