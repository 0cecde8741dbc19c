# popos: `make test` and `make demo` set everything up from nothing.
# TORCH picks the PyTorch build: users get the default (the build pip chooses for their machine);
# CI says `TORCH=torch==2.13.0 make test` to take the small CPU build.
TORCH ?= torch
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1

.PHONY: test lint install clean demo results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check popos tests

test: $(STAMP)
	$(BIN)/ruff check popos tests
	$(BIN)/python -m pytest -q

# The whole workflow on the embedded synthetic faces (config/demo.yaml, results under demo/); a second run
# finds everything up to date and says so.
DEMO_CONFIG := config/demo.yaml
# The demo trains on the CPU: let as many training jobs run at once as there are cores (one torch thread
# each, which uses small models best), instead of the workflow profile's one-GPU limit.
DEMO_JOBS ?= $(shell nproc)

demo: $(STAMP)
	$(BIN)/snakemake --cores all --resources gpu=$(DEMO_JOBS) --configfile $(DEMO_CONFIG) --quiet rules
	@$(BIN)/python -c 'from popos.config import load_params; \
	p = load_params("params.yaml", "$(DEMO_CONFIG)"); print(f"report: {p.grid.results_dir}/report/report.md")'

# The measured tables the README links to (results/*.md): model cost, CPU decoder speed, the oracle, and a
# copy of the demo's report when `make demo` has run.
results: $(STAMP)
	scripts/refresh-results.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
