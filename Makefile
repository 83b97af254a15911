# The two commands of the README's Quick start, plus the offline demo. Each installs what it needs,
# once: the install is a stamp file, redone only when pyproject.toml is newer than it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install pipeline test demo lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Editable install, so code changes need none; `rm .venv/.installed` forces one.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(INSTALLED)

# Fetches real CIFAR-10 and runs every stage (the full reproduction is a GPU job; see docs/training.md).
pipeline: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The whole test suite, offline, on the project's synthetic data set.
test: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

# The whole pipeline on synthetic data in a throw-away copy of the repository (no network).
demo: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m cifar_dvc.demo demo-run
