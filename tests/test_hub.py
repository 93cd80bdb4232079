"""`python -m mi_llm models list|fetch`: the hub's answers imitated at huggingface_hub's boundary
(HfApi.model_info and snapshot_download, which writes the hub cache's real layout), since the hub
cannot be reached from the test machines; the lock, verification and offline load are the real code."""

from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import huggingface_hub
import huggingface_hub.constants
import pytest

from mi_llm.__main__ import main
from mi_llm.models import hub, registry

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LATER = "fedcba9876543210fedcba9876543210fedcba98"
FILES = {
    "config.json": b'{"model_type": "glm"}',
    "model-00001-of-00001.safetensors": b"\x00" * 4096,
    "tokenizer.json": b"{}",
    "modeling_glm.py": b"print('repository code')",  # never downloaded
    "pytorch_model.bin": b"\x01" * 64,  # not downloaded: the repository has safetensors
}


class FakeHub:
    """model_info and snapshot_download of a hub whose `main` moves from COMMIT to LATER."""

    def __init__(self, cache, files=FILES):
        self.cache, self.files, self.head, self.downloads = cache, dict(files), COMMIT, []

    def _sibling(self, name, data):
        big = name.endswith((".safetensors", ".bin"))
        lfs = SimpleNamespace(sha256=hashlib.sha256(data).hexdigest()) if big else None
        return SimpleNamespace(rfilename=name, size=len(data), lfs=lfs)

    def model_info(self, repo_id, revision=None, files_metadata=False):
        sha = self.head if revision in (None, "main") else revision
        return SimpleNamespace(
            sha=sha, siblings=[self._sibling(n, d) for n, d in self.files.items()]
        )

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, **kw):
        self.downloads.append((repo_id, revision, sorted(allow_patterns)))
        folder = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
        folder.mkdir(parents=True, exist_ok=True)
        for name in allow_patterns:
            (folder / name).write_bytes(self.files[name])
        return str(folder)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    h = FakeHub(cache)
    monkeypatch.setenv(registry.LOCK_ENV, str(tmp_path / "models.lock.json"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda api, *a, **k: h.model_info(*a, **k)
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", h.snapshot_download)
    return h


def test_first_fetch_pins_the_commit_and_later_fetches_keep_it(fake_hub, capsys):
    assert main(["models", "fetch", "glm-4-9b-chat", "--no-progress"]) == 0
    repo, rev, files = fake_hub.downloads[0]
    assert (repo, rev) == ("THUDM/glm-4-9b-chat-hf", COMMIT)
    assert files == ["config.json", "model-00001-of-00001.safetensors", "tokenizer.json"]
    lock = json.loads(registry.lock_file().read_text())["models"]["glm-4-9b-chat"]
    assert lock["commit"] == COMMIT and lock["requested"] == "main"
    assert lock["files"]["model-00001-of-00001.safetensors"]["size"] == 4096
    assert registry.revision("glm-4-9b-chat") == COMMIT
    fake_hub.head = LATER  # the hub's main moves on; the study does not
    assert main(["models", "fetch", "glm-4-9b-chat", "--no-progress"]) == 0
    assert len(fake_hub.downloads) == 1  # pinned and in the cache: nothing asked of the hub
    shutil.rmtree(fake_hub.cache)  # a new machine with the lock file
    assert main(["models", "fetch", "glm-4-9b-chat", "--no-progress"]) == 0
    assert fake_hub.downloads[1][1] == COMMIT
    out = capsys.readouterr().out
    assert f"THUDM/glm-4-9b-chat-hf@{COMMIT}" in out and "HF_HUB_OFFLINE=1" in out


def test_list_shows_pinned_and_fetched(fake_hub, capsys):
    main(["models", "list"])
    out = capsys.readouterr().out
    assert "not pinned yet" in out and "PyPI package" in out
    hub.fetch("glm-4-9b-chat", progress=False)
    main(["models", "list"])
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("glm-4"))
    assert COMMIT[:12] in row and "fetched" in row and "not fetched" not in row


def test_a_file_that_does_not_match_the_hub_is_refused(fake_hub, capsys):
    good = fake_hub.snapshot_download

    def corrupt(repo_id, revision=None, allow_patterns=None, **kw):
        folder = good(repo_id, revision, allow_patterns)
        (hub.Path(folder) / "model-00001-of-00001.safetensors").write_bytes(b"\x02" * 4096)
        return folder

    huggingface_hub.snapshot_download = corrupt
    assert main(["models", "fetch", "glm-4-9b-chat", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "model-00001-of-00001.safetensors has sha256" in out and "fetch again" in out
    assert not registry.lock_file().exists()  # nothing pinned from a bad download


def test_only_bin_weights_are_fetched_where_there_are_no_safetensors(fake_hub):
    del fake_hub.files["model-00001-of-00001.safetensors"]
    hub.fetch("baichuan2-7b-chat", progress=False)
    assert "pytorch_model.bin" in fake_hub.downloads[0][2]
    assert "modeling_glm.py" not in fake_hub.downloads[0][2]


def test_offline_fetch_and_offline_load_name_the_command(fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "fetch", "glm-4-9b-chat"]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().out
    with pytest.raises(registry.WeightsNotFetched, match="models fetch glm-4-9b-chat"):
        registry.require_fetched("glm-4-9b-chat")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.fetch("glm-4-9b-chat", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry.require_fetched("glm-4-9b-chat")  # in the cache at the pinned commit: no error
    assert main(["models", "fetch", "glm-4-9b-chat"]) == 0  # and a fetch needs no hub


def test_fetch_for_a_params_file(fake_hub, capsys):
    assert main(["models", "fetch", "--params", "params/smoke.yaml"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out and not fake_hub.downloads
    assert main(["models", "fetch", "--params", "params/paper.yaml", "--no-progress"]) == 0
    assert {d[0] for d in fake_hub.downloads} == {registry.get(n).hub_id for n in hub.hub_models()}
    assert main(["models", "fetch", "no-such-model"]) == 2


def test_no_network_is_one_paragraph(fake_hub, monkeypatch, capsys):
    http_error = hub._transport_errors()[0]  # the HTTP client's (httpx2 or httpx)
    connect_error = type("ConnectError", (http_error,), {})

    def down(*a, **k):
        raise connect_error("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", down)
    assert main(["models", "fetch", "glm-4-9b-chat"]) == 1
    out = capsys.readouterr().out
    assert "could not fetch THUDM/glm-4-9b-chat-hf: ConnectError" in out
    assert "Check the network" in out and "Traceback" not in out
