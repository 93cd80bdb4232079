# The two commands of the study (each sets up .venv on first use, with the CPU build of torch):
#   make study    run the whole study on params/smoke.yaml -> runs/smoke/ and figures/
#   make test     run the test suite (fast tests; `make test PYTEST_ARGS="-m slow"` for the slow ones)
PARAMS ?= params/smoke.yaml
PYTEST_ARGS ?=
PY := .venv/bin/python

.PHONY: study test setup check lab

setup:
	@bash scripts/setup.sh

study: setup
	HF_HUB_OFFLINE=1 $(PY) -m mi_llm run $(PARAMS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# every shipped recipe is sound (keys, types, ranges, models, corpora, prompts); `python -m mi_llm
# check FILE` also checks this machine (data fetched, model folders, API key), as `run` does first
check: setup
	$(PY) -m mi_llm check --recipe-only params/*.yaml

lab: setup
	.venv/bin/jupyter lab notebooks/
