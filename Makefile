# The two commands of the README: `make demo` runs the whole path on embedded defaults,
# `make test` runs lint, types and the whole test suite. Both create/reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-drift test lint typecheck unit coverage system-deps bench dashboards clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU build first; the package's looser range then keeps it.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

system-deps:
	scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/latentwatch demo

# the model lifecycle's loop: drift -> retrain from the topic -> shadow -> compare -> promote
demo-drift: $(STAMP)
	$(BIN)/latentwatch demo --scenario drift

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not kafka and not postgres and not prometheus and not browser"

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

# the whole suite under coverage.py, then the per-module report (settings in pyproject.toml)
coverage: $(STAMP) system-deps
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

bench: $(STAMP)
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[bench]"
	$(BIN)/python bench/datasets.py
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/scoring.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo .coverage
