"""Round-based prompts, batched generation and resume, on a real CPsyCounD record and a tiny model."""

import json

import pytest

from mi_llm import params
from mi_llm.data import corpora, schema
from mi_llm.data.schema import DataError
from mi_llm.decode import cpu, engine, kernels
from mi_llm.eval import forecast, generation
from mi_llm.models import registry
from mi_llm.params import ROOT, ForecasterParams

NAME = "gemma3-270m"  # registry entry whose template/eot the tiny model shares


def _records(n=2):
    """Real CPsyCounD dialogues in the 02 test.jsonl record format."""
    ds = corpora.load("cpsycound", ROOT / "data/CPsyCounD/Data", limit=n)
    return [
        {
            "id": d.id,
            "source_corpus": d.corpus,
            "source_id": d.id,
            "prompt_version": "mi_v1",
            "topic": d.meta.get("topic"),
            "messages": d.to_messages(),
        }
        for d in ds
    ]


def _write(path, records):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def test_rounds_on_a_real_record():
    rec = _records(1)[0]
    msgs = rec["messages"]
    rs = generation.rounds([rec])
    n_answers = sum(
        1
        for i, m in enumerate(msgs)
        if i and m["role"] == "assistant" and msgs[i - 1]["role"] == "user"
    )
    assert len(rs) == n_answers > 3
    for k, r in enumerate(rs):
        assert r["round"] == k and r["dialogue_id"] == rec["id"]
        assert r["messages"][-1]["role"] == "user"  # the history ends with the client's turn
        at = len(r["messages"])  # full history: the reference is the very next (counselor) message
        assert msgs[:at] == r["messages"] and msgs[at] == {
            "role": "assistant",
            "content": r["reference"],
        }
    capped = generation.rounds([rec, rec], max_dialogues=1, max_rounds=2, context_turns=2)
    assert [r["round"] for r in capped] == [0, 1]
    assert [len(r["messages"]) for r in capped] == [
        1,
        1,
    ]  # window of 2 cannot start with a counselor
    assert capped[1]["messages"][0] == rs[1]["messages"][-1]


def test_read_test_names_the_bad_field(tmp_path):
    rec = _records(1)[0]
    rec["messages"][2]["content"] = "  "
    with pytest.raises(DataError, match=r"messages\[2\]\.content"):
        schema.read_split(_write(tmp_path / "test.jsonl", [rec]))


def test_batched_equals_unbatched_greedy_fp32(tiny_model_dir):
    # fp32: in bf16 a padded batch may round differently from a single prompt and flip an argmax
    model, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    prompts = [r["messages"] for r in generation.rounds(_records(2), max_rounds=3, context_turns=4)]
    assert len({len(str(p)) for p in prompts}) > 1  # different lengths, so the batch is padded
    batched = engine.generate(model, tok, prompts, batch_size=len(prompts), max_new_tokens=8)
    single = [engine.generate(model, tok, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(batched)
    cfg = engine.generation_config(model, tok, 8, stop_tokens=registry.get(NAME).special_tokens)
    assert (
        tok.convert_tokens_to_ids("<start_of_turn>") in cfg.eos_token_id
    )  # a new turn ends a reply
    assert tok.convert_tokens_to_ids("<end_of_turn>") in cfg.eos_token_id and not cfg.do_sample


def _params(**evaluation):
    ev = {
        "models": [NAME],
        "variants": ["base"],
        "max_dialogues": 2,
        "max_rounds": 3,
        "context_turns": 4,
        "batch_size": 2,
        "max_new_tokens": 4,
        **evaluation,
    }
    # the conditioned variant needs a tagged transcription (the test sets hold tagged turns)
    tp = {"tag_behaviour": "conditioned" in ev["variants"], "prompt_version": "mi_tagged_v1"}
    return params.from_dict(
        {"name": "test_generate", "device": "cpu", "evaluation": ev, "transcription": tp}
    )


def test_resume_skips_finished_rounds(tiny_model_dir, tmp_path, monkeypatch):
    test = _write(tmp_path / "test.jsonl", _records(2))
    out = tmp_path / "generations.jsonl"
    P, paths = _params(), {NAME: tiny_model_dir}
    real = engine.generate_batches

    def crash_after_one_batch(*a, **kw):
        it = real(*a, **kw)
        yield next(it)
        raise KeyboardInterrupt  # the run is killed after its first batch

    monkeypatch.setattr(engine, "generate_batches", crash_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        generation.run(P, test, out, model_paths=paths, progress=False)
    first = generation.read_generations(out)
    assert len(first) == 2
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"model": "torn')  # a crash in the middle of a write

    asked = []

    def spy(model, tok, prompts, **kw):
        asked.extend(prompts)
        yield from real(model, tok, prompts, **kw)

    monkeypatch.setattr(engine, "generate_batches", spy)
    recs = generation.run(P, test, out, model_paths=paths, progress=False)
    assert len(recs) == 6 and len(asked) == 4  # 2 dialogues x 3 rounds; 2 were done before
    assert {(r["dialogue_id"], r["round"]) for r in recs} == {
        (str(d), k) for d in {r["dialogue_id"] for r in recs} for k in range(3)
    }
    assert set(first[0]) == {
        "model",
        "variant",
        "dialogue_id",
        "round",
        "topic",
        "messages",
        "reference",
        "reply",
        "behaviour",
        "settings",
    }
    asked.clear()
    assert generation.run(P, test, out, model_paths=paths, progress=False) == recs
    assert asked == []  # nothing left to do: the model is not even asked
    assert {r["settings"] for r in recs} == {
        generation.fingerprint(P, NAME, "base", tiny_model_dir, None)
    }
    with pytest.raises(ValueError, match="other settings"):  # never mix replies of two settings
        generation.run(_params(max_new_tokens=5), test, out, model_paths=paths, progress=False)


def test_finetuned_variant_needs_and_uses_the_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    test = _write(tmp_path / "test.jsonl", _records(1))
    P = _params(variants=["finetuned", "base"], max_dialogues=1, max_rounds=2)
    with pytest.raises(FileNotFoundError, match="adapter"):
        generation.run(
            P,
            test,
            tmp_path / "g.jsonl",
            model_paths={NAME: tiny_model_dir},
            adapter_dirs={NAME: tmp_path / "none"},
            progress=False,
        )
    model, _ = registry.load(NAME, "cpu", path=tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    recs = generation.run(
        P,
        test,
        tmp_path / "g.jsonl",
        model_paths={NAME: tiny_model_dir},
        adapter_dirs={NAME: tmp_path / "adapter"},
        progress=False,
    )
    assert [(r["variant"], r["round"]) for r in recs] == [
        ("base", 0),
        ("base", 1),
        ("finetuned", 0),
        ("finetuned", 1),
    ]


# ----------------------------------------------------------------------------- conditioned variant
def _tagged_records(n=1):
    """Real records as a tag_behaviour corpus stores them: every counselor turn starts with a tag."""
    recs = _records(n)
    for r in recs:
        for k, m in enumerate(r["messages"]):
            if m["role"] == "assistant":
                m["content"] = schema.tag_text(m["content"], schema.TAGS[k % len(schema.TAGS)])
    return recs


def test_split_tag_and_prefix():
    assert generation.split_tag("<mi:open_question> 你愿意多说说吗？") == (
        "open_question",
        "你愿意多说说吗？",
    )
    assert generation.split_tag("<mi:advice> 早点睡。") == (
        None,
        "早点睡。",
    )  # an invented label is still cut
    assert generation.split_tag("没有标签。") == (None, "没有标签。")
    assert generation.tag_prefix("simple_reflection") == "<mi:simple_reflection>"
    with pytest.raises(ValueError, match="unknown MI behaviour"):
        generation.tag_prefix("advice")
    rs = generation.rounds(_tagged_records(1), max_rounds=2)
    assert (
        rs[0]["reference"] == _records(1)[0]["messages"][1]["content"]
    )  # the reference is scored untagged


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model with non-zero B (it changes the replies)."""
    from peft import LoraConfig, get_peft_model

    model, _ = registry.load(NAME, "cpu", path=tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path


def test_conditioned_variant_prefixes_the_tag_and_stores_plain_replies(
    tiny_model_dir, tiny_adapter, tmp_path, monkeypatch
):
    test = _write(tmp_path / "test.jsonl", _tagged_records(1))
    out, ad = tmp_path / "g.jsonl", tiny_adapter
    P = _params(
        variants=["conditioned", "finetuned"], condition_on="complex_reflection", max_rounds=2
    )
    texts, real_texts, real_batches = [], engine.prompt_texts, engine.generate_batches

    def spy_texts(tok, prompts, prefixes=None):
        texts.extend(real_texts(tok, prompts, prefixes))
        return texts[-len(prompts) :]

    def model_writes_a_tag(*a, **kw):  # as a model fine-tuned on a tagged corpus would
        for idx, replies in real_batches(*a, **kw):
            yield idx, ["<mi:other> " + r for r in replies]

    monkeypatch.setattr(engine, "prompt_texts", spy_texts)
    monkeypatch.setattr(engine, "generate_batches", model_writes_a_tag)
    recs = generation.run(
        P, test, out, model_paths={NAME: tiny_model_dir}, adapter_dirs={NAME: ad}, progress=False
    )
    assert [(r["variant"], r["round"]) for r in recs] == [
        ("conditioned", 0),
        ("conditioned", 1),
        ("finetuned", 0),
        ("finetuned", 1),
    ]
    assert [t.endswith("<start_of_turn>model\n") for t in texts] == [
        True,
        True,
        False,
        False,
    ]  # finetuned first
    assert all(t.endswith("<start_of_turn>model\n<mi:complex_reflection>") for t in texts[2:])
    for r in recs:
        assert "<mi:" not in r["reply"] and "<mi:" not in r["reference"]
        assert r["behaviour"] == (
            "complex_reflection" if r["variant"] == "conditioned" else "other"
        )
    fp = {r["variant"]: r["settings"] for r in recs}
    assert fp["conditioned"] != fp["finetuned"]
    with pytest.raises(ValueError, match="other settings"):  # another fixed behaviour: never mixed
        generation.run(
            _params(variants=["conditioned"], condition_on="open_question", max_rounds=2),
            test,
            out,
            model_paths={NAME: tiny_model_dir},
            adapter_dirs={NAME: ad},
            progress=False,
        )
    with pytest.raises(ValueError, match="condition_on"):
        generation.run(
            _params(variants=["conditioned"], condition_on="advice"),
            test,
            out,
            model_paths={NAME: tiny_model_dir},
            adapter_dirs={NAME: ad},
            progress=False,
        )


def test_conditioned_on_the_forecaster(tiny_model_dir, tiny_adapter, tmp_path):
    sessions = forecast.load_sessions(ROOT / "data/AnnoMI")[:20]  # real AnnoMI codes, a quick fit
    bundle = forecast.fit(sessions, ForecasterParams(model="universal"), seed=0)
    fc = forecast.save(bundle, tmp_path / "forecaster.joblib")
    test = _write(tmp_path / "test.jsonl", _tagged_records(2))
    out, ad = tmp_path / "g.jsonl", tiny_adapter
    P = _params(variants=["conditioned"], condition_on="forecaster", max_rounds=3, context_turns=2)
    kw = {"model_paths": {NAME: tiny_model_dir}, "adapter_dirs": {NAME: ad}, "progress": False}
    with pytest.raises(FileNotFoundError, match="forecaster"):
        generation.run(P, test, out, forecaster_path=tmp_path / "none.joblib", **kw)
    recs = generation.run(P, test, out, forecaster_path=fc, **kw)
    full = generation.rounds(schema.read_split(test), 2, 3, None)  # whole history, tags included
    want = {
        (r["dialogue_id"], r["round"]): forecast.predict_next(bundle, r["messages"]) for r in full
    }
    assert len(recs) == 6 and {(r["dialogue_id"], r["round"]): r["behaviour"] for r in recs} == want
    lines = out.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    rec["behaviour"] = next(t for t in schema.TAGS if t != rec["behaviour"])
    out.write_text(
        "\n".join([json.dumps(rec, ensure_ascii=False), *lines[1:]]) + "\n", encoding="utf-8"
    )
    with pytest.raises(
        ValueError, match="other behaviours"
    ):  # the forecaster changed since: refuse to mix
        generation.run(P, test, out, forecaster_path=fc, **kw)


def test_conditioned_on_an_untagged_corpus_warns(tiny_model_dir, tiny_adapter, tmp_path):
    test = _write(tmp_path / "test.jsonl", _records(1))
    P = _params(variants=["conditioned"], condition_on="open_question", max_rounds=1)
    with pytest.warns(UserWarning, match="not fine-tuned on"):
        recs = generation.run(
            P,
            test,
            tmp_path / "g.jsonl",
            model_paths={NAME: tiny_model_dir},
            adapter_dirs={NAME: tiny_adapter},
            progress=False,
        )
    assert [r["behaviour"] for r in recs] == ["open_question"]


def test_append_reads_no_earlier_record(tmp_path, monkeypatch):
    """Appending a batch costs O(batch): the file is not re-read (O(n^2) over a corpus), unless torn."""
    from pathlib import Path

    out = tmp_path / "g.jsonl"
    generation._append(out, [{"i": i} for i in range(3)])

    def refuse(self, *a, **kw):
        raise AssertionError(f"{self} re-read on append")

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", refuse)
        m.setattr(Path, "read_text", refuse)
        generation._append(out, [{"i": 3}])
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"i": 99, "torn')  # a crash in the middle of a line
    generation._append(out, [{"i": 4}])
    assert [r["i"] for r in generation.read_generations(out)] == [0, 1, 2, 3, 4]


def test_greedy_loop_drops_finished_rows_and_matches_generate(tiny_model_dir):
    """Our greedy loop (finished rows leave the batch) writes what transformers' generate writes."""
    import torch

    model, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    prompts = [r["messages"] for r in generation.rounds(_records(2), max_rounds=3, context_turns=4)]
    tok.padding_side = "left"
    texts = engine.prompt_texts(tok, prompts)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert any(shared for _, shared in cpu.prefill_plan(ids))  # rounds share a prefill
    cfg = engine.generation_config(model, tok, 12)
    # stop on frequent tokens of this random model, so that rows finish at different steps
    with torch.inference_mode():
        free = model.generate(**enc, generation_config=engine.generation_config(model, tok, 12))
    new = free[:, enc["input_ids"].shape[1] :]
    eos = {int(new[0, 2]), int(new[-1, 5])}
    cfg.eos_token_id = sorted(eos)
    with torch.inference_mode():
        want = model.generate(**enc, generation_config=cfg)[:, enc["input_ids"].shape[1] :].tolist()
        got = cpu.greedy_rows(model, ids, 12, eos, tok.pad_token_id)
    lengths = [len(r) for r in got]
    assert len(set(lengths)) > 1  # rows did finish at different steps
    for g, w in zip(got, want):
        assert g == w[: len(g)] and (len(g) == 12 or g[-1] in eos)


def _greedy_rows_equal_generate_alone(model, ids, pad_id, new=10):
    """The batched greedy loop writes, for each prompt, what transformers' generate writes for it
    alone."""
    import torch

    with torch.inference_mode():
        got = cpu.greedy_rows(model, ids, new, set(), pad_id)
        for g, p in zip(got, ids):
            want = model.generate(
                torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=None
            )
            assert g == want[0, len(p) :].tolist()


def test_row_attention_skips_the_padding_and_writes_the_same_tokens(tiny_model_dir, monkeypatch):
    """Rows of like length attend together from the first position one of them attends to: each
    prompt gets the tokens transformers' generate writes for it alone, and the model attends with
    sdpa again afterwards."""

    model, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    prompts = [r["messages"] for r in generation.rounds(_records(2), max_rounds=3, context_turns=4)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in engine.prompt_texts(tok, prompts)]
    assert len({len(i) for i in ids}) > 2
    monkeypatch.setattr(kernels, "ATTENTION_CALL", 0)  # a run for each length
    seen, groups = [], kernels.attention_groups
    monkeypatch.setattr(kernels, "attention_groups", lambda *a: seen.append(groups(*a)) or seen[-1])
    assert model.config._attn_implementation == "sdpa"
    _greedy_rows_equal_generate_alone(model, ids, tok.pad_token_id)
    assert max(len(runs) for runs in seen) > 2 and any(s > 0 for r in seen for _, _, s in r)
    assert model.config._attn_implementation == "sdpa" and kernels._RUNS == [None, None]


def test_attention_groups_cut_the_rows_at_the_least_cost():
    """Runs of consecutive rows covering all rows, each from its earliest row's first position, at
    the least cost of every possible cut (rows x positions attended + call per run)."""
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(300):
        rows, n, call = rng.randint(1, 7), rng.randint(1, 60), rng.choice([0, 5, 40, 500])
        first = [rng.randrange(n) for _ in range(rows)]

        def cost(runs):
            return sum((b - a) * (n - s) + call for a, b, s in runs)  # noqa: B023

        runs = kernels.attention_groups(first, n, call)
        assert runs[0][0] == 0 and runs[-1][1] == rows
        assert all(b == a2 for (_, b, _), (a2, _, _) in itertools.pairwise(runs))
        assert all(s == min(first[a:b]) for a, b, s in runs)
        best = min(
            cost([(a, b, min(first[a:b])) for a, b in zip((0, *cuts), (*cuts, rows))])
            for k in range(rows)
            for cuts in itertools.combinations(range(1, rows), k)
        )
        assert cost(runs) == best


def test_prefill_plan_encodes_each_shared_start_once():
    ids = [[1, 2, 3], [1, 2], [1, 2, 3, 4], [1, 5], [1], [2, 1], [1, 2], [7]]
    plan = cpu.prefill_plan(ids)
    assert sorted(i for i, _ in plan) == list(range(len(ids)))

    def common(a, b):
        return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    done = []
    for i, shared in plan:
        assert 0 <= shared < len(ids[i])  # at least the last token is encoded
        if done:  # taken from the one encoded before, and none before shares more
            assert ids[i][:shared] == done[-1][:shared]
            most = max(common(d, ids[i]) for d in done)
            assert most == shared or most == shared + 1 == len(ids[i])  # a repeated prompt
        done.append(ids[i])
    encoded = sum(len(ids[i]) - shared for i, shared in plan)
    assert encoded == 1 + 1 + 1 + 1 + 1 + 1 + 2 + 1  # [1] [1,2]x2 [..3] [..4] [1,5] [2,1] [7]
    assert cpu.prefill_plan([]) == []


def test_batches_by_prefix_keeps_neighbours_together_longest_first():
    ids = [[5, 1], [1, 2, 3, 4, 5], [1, 2, 9], [5, 2], [1, 2]]
    batches = cpu.batches_by_prefix(ids, 2)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches[0] == [4, 1] and [2, 0] in batches and [3] in batches


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_head_argmax_equals_the_models_logits(tiny_model_dir, monkeypatch, dtype):
    """Chunked output layer with the model's soft-cap: the argmax of the model's own logits (fp32:
    vocabulary-major chunks, bf16: row-major ones), the first index of a tied maximum."""
    import torch

    model, _ = registry.load(NAME, "cpu", dtype=dtype, path=tiny_model_dir)
    model.config.final_logit_softcapping = 0.05  # squashes the logits: ties are likely
    # several chunks of the 262k vocabulary, the last one shorter
    monkeypatch.setattr(kernels, "VOCAB_CHUNK", {"float32": 1000, "reduced": 1000})
    ids = torch.randint(0, 5000, (6, 9))
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids).last_hidden_state[:, -1]
        if dtype == "float32":
            logits = model(input_ids=ids).logits[:, -1]
        else:  # the model's soft-capped logits from the same bf16 products (their rounding
            # depends on the kernel, and the model's own head multiplies in the other order)
            logits = torch.tanh(torch.mm(hidden, model.lm_head.weight.T) / 0.05) * 0.05
            assert (logits == logits.amax(-1, keepdim=True)).sum(-1).gt(1).any()  # ties
        assert kernels.head_argmax(model, hidden).tolist() == logits.argmax(-1).tolist()


def test_shared_prefill_past_a_sliding_window_equals_one_prompt_at_a_time(
    tiny_model_dir, monkeypatch
):
    """Whole-history rounds longer than a sliding window: sharing the longest round's prefill gives
    each round the tokens transformers' generate writes for that round alone."""
    import torch
    from transformers import AutoConfig, Gemma3ForCausalLM

    _, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.sliding_window = 16  # far shorter than the prompts
    monkeypatch.setattr(kernels, "ATTENTION_CALL", 0)  # rows attend from their own first position
    torch.manual_seed(1)
    model = Gemma3ForCausalLM(cfg).eval()
    prompts = [r["messages"] for r in generation.rounds(_records(1), max_rounds=3)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in engine.prompt_texts(tok, prompts)]
    assert min(map(len, ids)) > 16 and all(s > 16 for _, s in cpu.prefill_plan(ids)[1:])
    _greedy_rows_equal_generate_alone(model, ids, tok.pad_token_id)


def test_cache_layers_with_room_hold_what_transformers_layers_hold():
    """The decode's preallocated cache layers return and keep the keys and values of transformers'
    DynamicLayer and DynamicSlidingWindowLayer, through a prefill, steps past their room (the
    buffers grow) and a batch selection."""
    import torch
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    torch.manual_seed(0)
    for theirs in (DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=6)):
        ours = cpu._with_room(theirs, 2)
        assert type(ours) is not type(theirs) and isinstance(ours, type(theirs))
        for step, n in enumerate([9, 1, 1, 1, 2, 1]):  # a prefill, then decode steps
            if step == 4:
                keep = torch.tensor([0, 2])
                theirs.batch_select_indices(keep)
                ours.batch_select_indices(keep)
            kv = [torch.randn(3 if step < 4 else 2, 2, n, 4) for _ in range(2)]
            for a, b in zip(theirs.update(*kv), ours.update(*kv)):
                assert torch.equal(a, b)  # what attention sees this step
            assert torch.equal(theirs.keys, ours.keys) and torch.equal(theirs.values, ours.values)
            assert theirs.get_seq_length() == ours.get_seq_length()
            assert theirs.get_mask_sizes(1) == ours.get_mask_sizes(1)


def test_head_probs_warp_as_transformers_generate(tiny_model_dir):
    """Temperature and top-p: the probabilities transformers' sampling warpers give the model's
    own logits (the distribution its sampling `generate` draws from)."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    model, _ = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    ids = torch.randint(0, 5000, (4, 7))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[:, -1]
        hidden = model.base_model(input_ids=ids).last_hidden_state[:, -1]
        for temperature, top_p in [(0.7, 1.0), (1.3, 0.9), (0.5, 0.3)]:
            warp = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
            if top_p < 1.0:
                warp.append(TopPLogitsWarper(top_p))
            want = warp(ids, logits).softmax(-1)
            got = kernels.head_probs(model, hidden, temperature, top_p)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
            assert torch.equal(got == 0, want == 0)  # the same nucleus


def test_draw_follows_the_distribution_and_never_a_zero():
    """Inverse-transform draws: frequencies within 5 standard errors of the probabilities, never a
    token of probability 0 (first, middle or last), the same draws for the same seed."""
    import torch

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    n = 20000
    torch.manual_seed(0)
    draws = torch.stack([kernels.draw(probs) for _ in range(n)])  # (n, rows)
    assert draws[:, 1].eq(5).all()
    freq = torch.bincount(draws[:, 0], minlength=6).double() / n
    assert freq[[0, 2, 5]].eq(0).all()
    se = (probs[0].double() * (1 - probs[0].double()) / n).sqrt()
    assert ((freq - probs[0].double()).abs() <= 5 * se + 1e-12).all(), freq
    torch.manual_seed(0)
    assert torch.equal(torch.stack([kernels.draw(probs) for _ in range(50)]), draws[:50])


def test_sampled_rows_are_seeded_and_batched_rows_differ(tiny_model_dir):
    """With shared starts in a batch, sampling stays seeded: the same seed draws the same rows."""
    import torch

    model, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_model_dir)
    prompts = [r["messages"] for r in generation.rounds(_records(2), max_rounds=2, context_turns=4)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in engine.prompt_texts(tok, prompts)]
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.inference_mode():
            runs.append(cpu.sampled_rows(model, ids, 8, set(), tok.pad_token_id, 1.0, 0.95))
    assert runs[0] == runs[1] and len(runs[0]) == len(ids)
    assert len({tuple(r) for r in runs[0]}) > 1


def test_few_row_linears_compute_what_linear_computes_and_leave_no_trace():
    """Inside the decode, a Linear of a few rows is weight @ x.T: the same values as F.linear (to
    float rounding), many rows still F.linear; afterwards the layers run their own forward."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.Linear(96, 32, bias=False))
    for rows in (1, 7, kernels.FEW_ROWS, kernels.FEW_ROWS + 1):
        x = torch.randn(rows, 1, 48)
        want = model(x)
        with torch.inference_mode(), kernels._few_row_linears(model):
            assert all("forward" in m.__dict__ for m in model)
            got = model(x)
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not any("forward" in m.__dict__ for m in model)
    with torch.inference_mode(), kernels._few_row_linears(model.to(torch.bfloat16)):
        assert not any("forward" in m.__dict__ for m in model)  # bf16 keeps F.linear
