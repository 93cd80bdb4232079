"""Provenance: everything a run needs to be traced is recorded, and no secret is."""

import json

import pytest

from mi_llm import params, runs


def test_provenance_records_stage_inputs_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-not-to-store")
    data = tmp_path / "data.txt"
    data.write_text("来访者：你好\n")
    p = params.from_dict({"name": "prov", "seed": 7})
    runs.start_stage(p, "01_x", inputs=[data])
    out = p.stage_dir("01_x") / "out.csv"
    out.write_text("a\n1\n")
    runs.finish_stage(p, "01_x", outputs=[out], n=3)
    prov = json.loads((p.run_dir / "provenance.json").read_text())
    assert prov["params"]["seed"] == 7 and prov["seeds"] == {"seed": 7}
    assert prov["packages"]["transformers"] and prov["python"].startswith("3.")
    assert "commit" in prov["git"]
    stage = prov["stages"]["01_x"]
    assert stage["inputs"][str(data)] == runs.sha256_file(data)
    assert stage["finished"] and stage["wall_s"] >= 0 and stage["n"] == 3
    assert "sk-secret-value-not-to-store" not in (p.run_dir / "provenance.json").read_text()


def test_seeding_is_reproducible():
    import numpy as np
    import torch

    runs.set_seed(3)
    a = (np.random.rand(), torch.rand(1).item())
    runs.set_seed(3)
    assert a == (np.random.rand(), torch.rand(1).item())


# ----------------------------------------------------------------------------- one run at a time, atomic writes
def test_concurrent_provenance_writes_never_collide(tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
    p = params.from_dict({"name": "conc"})
    errors = []

    def writer(i):
        for j in range(60):
            try:
                runs._write(p, {"writer": i, "n": j, "pad": "x" * 2000})
            except OSError as e:  # a shared temporary name: FileNotFoundError
                errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    last = json.loads((p.run_dir / "provenance.json").read_text())
    assert set(last) == {"writer", "n", "pad"}
    assert [f.name for f in p.run_dir.iterdir()] == ["provenance.json"]  # no temporary file left


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    import pytest

    f = runs.write_atomic(tmp_path / "train.jsonl", "old\n")
    with pytest.raises(RuntimeError), runs.atomic_path(f) as tmp:
        tmp.write_text("half a rec")
        raise RuntimeError("killed")
    assert f.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == [
        "train.jsonl"
    ]
    d = tmp_path / "mi_corpus"
    for text in ("one", "two"):  # a folder is replaced whole
        with runs.atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "data.txt").write_text(text)
    assert [x.name for x in d.iterdir()] == ["data.txt"] and (d / "data.txt").read_text() == "two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mi_corpus", "train.jsonl"]


def test_a_second_run_of_the_same_name_stops_at_once(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    import pytest

    from mi_llm.params import ROOT

    env = {**os.environ, "MI_LLM_RUNS": str(tmp_path)}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from mi_llm import runs\n"
                f"with runs.lock({str(tmp_path / 'smoke')!r}):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "mi_llm", "run", "params/smoke.yaml", "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1 and time.monotonic() - t0 < 60
        assert f"already running (pid {holder.pid})" in second.stderr
        assert not (tmp_path / "smoke" / "notebooks").exists()  # no stage started
        # a stage run by hand (start_stage) is refused the same way
        monkeypatch.setenv(params.RUNS_ENV, str(tmp_path))
        with pytest.raises(runs.AlreadyRunning, match=f"pid {holder.pid}"):
            runs.start_stage(params.from_dict({"name": "smoke"}), "01_x")
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it
    with runs.lock(tmp_path / "smoke"):
        assert (tmp_path / "smoke" / ".lock").read_text() == str(os.getpid())


def test_runs_folder_is_redirected_by_one_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(params.RUNS_ENV, raising=False)
    assert params.runs_root() == params.ROOT / "runs"
    assert params.from_dict({"name": "x"}).run_dir == params.ROOT / "runs/x"
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path))
    assert params.from_dict({"name": "x"}).run_dir == tmp_path / "x"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "-x", "", "runs name"])
def test_a_run_name_that_is_not_a_plain_folder_name_writes_nothing(tmp_path, monkeypatch, name):
    """A run named `..` would write provenance.json and a lock into the repository root."""
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv(params.RUNS_ENV, str(runs_dir))
    with pytest.raises(params.ParamsError, match=r"is not a run name"):
        params.from_dict({"name": name})
    p = params.Params(name=name)  # built around the checks: the run folder still refuses it
    with pytest.raises(params.ParamsError, match=r"^name: .* is not a run name"):
        runs.start_stage(p, "01_corpus_quality")
    assert list(tmp_path.rglob("*")) == []  # no lock, no provenance anywhere


def test_run_names_allow_letters_digits_dots_dashes_underscores():
    for name in ["smoke", "paper-dryrun", "v1.2_a", "2026"]:
        assert params.from_dict({"name": name}).name == name


def test_the_recipe_and_its_overrides_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
    p = params.load("params/smoke.yaml", ["quality.top_k=3"])
    runs.record_recipe(p, "params/smoke.yaml", ["quality.top_k=3"])
    runs.start_stage(p, "01_x")  # a stage keeps the record
    prov = runs.read_provenance(p)
    assert prov["recipe"]["file"] == "params/smoke.yaml"
    assert prov["recipe"]["overrides"] == ["quality.top_k=3"]
    assert prov["recipe"]["sha256"] == runs.sha256_file(params.ROOT / "params/smoke.yaml")
    assert prov["params"]["quality"]["top_k"] == 3
    runs.finish_stage(p, "01_x")
