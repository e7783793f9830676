# clear-rl developer commands. `make install` then `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first so that pip does not pull a multi-GB CUDA build
# as a dependency of the project. On a GPU machine: `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
# DeepSpeed (ZeRO-3; its tests run on CPU processes) imports torch in its setup: it is built
# against the torch installed here (no isolated build env, which would fetch a CUDA torch) and
# without its C++ ops (DS_BUILD_OPS=0).
DEEPSPEED_SPEC ?= deepspeed==0.19.8

.PHONY: install test test-fast lint format bench demo demo-smoke

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --no-build-isolation "$(DEEPSPEED_SPEC)"

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

# The whole CLEAR pipeline on a tiny model and ShapesVQA (the README states its measured time).
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which on a shared 2-core
# machine otherwise costs several times the wall time. HF_HUB_OFFLINE=1: everything is built
# locally, so nothing (not even TRL's start-of-training telemetry) reaches the network.
demo:
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/clear-rl demo --out demo_out

# A few steps per stage: every stage hands a loadable model to the next and the report is written.
demo-smoke:
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/clear-rl demo --smoke --out demo_smoke_out
