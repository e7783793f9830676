# clear-rl developer commands. `make install` then `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact versions every test and published figure ran on, installed as pip constraints:
# pyproject.toml keeps ranges for library users. `make lock` regenerates it.
LOCK ?= requirements.lock
# torch is installed first, at the lock's version: a torch build already in $(VENV) at that
# version (CPU-only, or a CUDA one from PyTorch's index) is kept.
TORCH_SPEC ?= torch
# A fresh resolve of pyproject.toml's ranges (the newest versions they allow), for make lock and
# make test-latest. torch's builds differ per machine (CPU-only, CUDA versions), so it stays at
# the locked version unless asked: make lock TORCH_LATEST=torch==2.14.1
LATEST_VENV ?= .venv-latest
TORCH_LATEST ?= torch==$(shell sed -n 's/^torch==//p' $(LOCK))
# DeepSpeed (ZeRO-3; its tests run on CPU processes) imports torch in its setup: it is built
# against the torch installed here (no isolated build env, which would fetch a CUDA torch) and
# without its C++ ops (DS_BUILD_OPS=0). Not in the lock: pip would build it in isolation.
DEEPSPEED_SPEC ?= deepspeed==0.19.8

.PHONY: install test test-fast test-latest latest-venv lock lint format bench demo demo-seeds demo-smoke

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)" -c $(LOCK)
	$(BIN)/python -m pip install -e ".[dev]" -c $(LOCK)
	$(BIN)/python -m pip install setuptools wheel -c $(LOCK)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --no-build-isolation "$(DEEPSPEED_SPEC)" -c $(LOCK)

latest-venv:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --upgrade pip
	echo "$(TORCH_LATEST)" > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install --upgrade --upgrade-strategy eager -e ".[dev]" \
	    -c $(LATEST_VENV)/torch-constraint.txt

# The newest versions the ranges allow become the lock: run it after changing a range or a
# dependency (a branch adding one, say), then make install and make test on the new lock.
# Local version labels (torch's +cpu) are dropped, so the lock fits CPU and CUDA builds alike.
lock: latest-venv
	{ echo "# The versions clear-rl is tested with: make install installs them (as pip constraints)."; \
	  echo "# Written by make lock, a fresh resolve of pyproject.toml's ranges; do not edit by hand."; \
	  echo "# Resolved with Python $$($(LATEST_VENV)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

# The suite on the newest versions pyproject.toml's ranges allow: a release that breaks a private
# API clear-rl relies on shows here the day it lands. Tests marked `lock` (they hold only on the
# locked set) are left out.
test-latest: latest-venv
	$(LATEST_VENV)/bin/python -m pytest -q -m "not lock"

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check clear_rl rewards tests benchmarks
	$(BIN)/ruff format --check clear_rl rewards tests benchmarks

format:
	$(BIN)/ruff check --fix clear_rl rewards tests benchmarks
	$(BIN)/ruff format clear_rl rewards tests benchmarks

bench:
	$(BIN)/python -m benchmarks

# The whole CLEAR pipeline on a tiny model and ShapesVQA (docs/demo.md states its measured time).
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which on a shared 2-core
# machine otherwise costs several times the wall time. HF_HUB_OFFLINE=1: everything is built
# locally, so nothing (not even TRL's start-of-training telemetry) reaches the network.
demo:
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/clear-rl demo --out demo_out

# The demo over three seeds: demo_seeds_out/seed_<n>/ each, and one SUMMARY.md of every cell's
# mean, min and max (the targets are judged on the mean). SEEDS=0,1,2,3 for more.
SEEDS ?= 0,1,2
demo-seeds:
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/clear-rl demo --seeds $(SEEDS) --out demo_seeds_out

# A few steps per stage: every stage hands a loadable model to the next and the report is written.
demo-smoke:
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/clear-rl demo --smoke --out demo_smoke_out
