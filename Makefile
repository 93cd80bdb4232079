# The two commands of the study (each sets up .venv on first use, with the CPU build of torch):
#   make study    run the whole study on params/smoke.yaml -> runs/smoke/ and figures/
#   make test     run the test suite (fast tests; `make test PYTEST_ARGS="-m slow"` for the slow ones)
# The paper on a GPU machine (docs/paper-on-gpu.md): bash benchmarks/gpu_check.sh, then
#   make paper    fetch and pin the weights and corpora, check, print the plan, ask, then run
PARAMS ?= params/smoke.yaml
PAPER ?= params/paper.yaml
PYTEST_ARGS ?=
PY := .venv/bin/python
SHELL := /bin/bash

.PHONY: study test setup check lab paper

setup:
	@bash scripts/setup.sh

# hub weights are fetched (and pinned) online first; the run itself stays offline
study: setup
	$(PY) -m mi_llm models fetch --params $(PARAMS)
	HF_HUB_OFFLINE=1 $(PY) -m mi_llm run $(PARAMS)

paper: setup
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else \
	  '[mi_llm] torch sees no CUDA GPU: run bash benchmarks/gpu_check.sh first (docs/paper-on-gpu.md)')"
	$(PY) -m mi_llm models fetch --params $(PAPER)
	$(PY) -m mi_llm data fetch
	$(PY) -m mi_llm check $(PAPER)
	$(PY) -m mi_llm plan $(PAPER)
	@[[ "$(YES)" == 1 ]] || { read -r -p "Start the run? API requests and GPU time are spent from here [y/N] " a; \
	  [[ "$$a" == [yY] ]] || { echo "[mi_llm] not started"; exit 1; }; }
	HF_HUB_OFFLINE=1 $(PY) -m mi_llm run $(PAPER)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# every shipped recipe is sound (keys, types, ranges, models, corpora, prompts); `python -m mi_llm
# check FILE` also checks this machine (data fetched, model folders, API key), as `run` does first
check: setup
	$(PY) -m mi_llm check --recipe-only params/*.yaml

lab: setup
	.venv/bin/jupyter lab notebooks/
