"""Provenance: everything a run needs to be traced is recorded, and no secret is."""

import json

from mi_llm import params, runs


def test_provenance_records_stage_inputs_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_LLM_RUNS", str(tmp_path / "runs"))
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
