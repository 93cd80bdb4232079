"""mi_llm.llm.cache: the SQLite answer cache, its keys and its one path per run."""

from __future__ import annotations

from pathlib import Path

from mi_llm import params
from mi_llm.llm import cache


def test_cache_key_separates_model_settings_messages_attempt():
    m = [{"role": "user", "content": "hi"}]
    k = cache.cache_key("a", {"temperature": 0}, m, 0)
    assert k == cache.cache_key("a", {"temperature": 0}, m, 0)
    assert (
        len(
            {
                k,
                cache.cache_key("b", {"temperature": 0}, m, 0),
                cache.cache_key("a", {"temperature": 1}, m, 0),
                cache.cache_key("a", {"temperature": 0}, [{"role": "user", "content": "ho"}], 0),
                cache.cache_key("a", {"temperature": 0}, m, 1),
            }
        )
        == 5
    )


def test_answers_survive_a_reopen(tmp_path):
    store = cache.Cache(tmp_path / "c.sqlite")
    store.put("k", "req", "m", cache.Answer("hello", "stop", 3, 2))
    store.close()
    store = cache.Cache(tmp_path / "c.sqlite")
    assert store.get("k") == cache.Answer("hello", "stop", 3, 2) and store.get("other") is None
    store.close()


def test_cache_path_defaults_to_the_run_folder(tmp_path):
    P = params.load("params/smoke.yaml")
    assert cache.cache_path(P) == P.run_dir / "llm_cache.sqlite"
    P.llm.cache_path = str(tmp_path / "elsewhere.sqlite")
    assert cache.cache_path(P) == Path(tmp_path / "elsewhere.sqlite")
