# popos: `make test` and `make demo` set everything up from nothing.
# TORCH picks the PyTorch build: users get the default (the build pip chooses for their machine);
# CI says `TORCH=torch==2.13.0 make test` to take the small CPU build.
TORCH ?= torch
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1

.PHONY: test lint install clean

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
