# The two commands of the README's Quick start, plus the offline demo. Each installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install pipeline test demo lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e ".[dev]"

# Fetches real CIFAR-10 and runs every stage (the full reproduction is a GPU job; see README).
pipeline: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The whole test suite, offline, on the project's synthetic data set.
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

# The whole pipeline on synthetic data in a throw-away copy of the repository (no network).
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m cifar_dvc.demo demo-run
