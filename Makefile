# The two commands of the README's Quick start, plus the offline demo. Each installs what it needs,
# once: the install is a stamp file, redone only when pyproject.toml is newer than it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install pipeline test demo lint peer-venv

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

# The peer of `fast`: PyTorch airbench 0.1.8 in its own venv, never a dependency of the project
# (benchmarks/peer_airbench.py runs it). torch is the CPU-only wheel (PIP_FIND_LINKS=/opt/wheels
# here; elsewhere add --index-url https://download.pytorch.org/whl/cpu): PyPI's own torch pulls
# ~3 GB of CUDA libraries. No torchvision: airbench imports it for transforms.Normalize and (only
# without its .pt cache) datasets.CIFAR10, and PyPI's build for torch 2.13 (0.28.0) fails to
# import against the CPU torch ("operator torchvision::nms does not exist"); the adapter puts a
# stand-in of those two names in its place.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

$(PEER_STAMP):
	$(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install "torch==2.13.0+cpu" "airbench==0.1.8" numpy  # numpy: the .npz splits
	touch $@

peer-venv: $(PEER_STAMP)
