# Everything a fresh clone needs: `make demo`, `make test` (or `make test-fast`), `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned in constraints.txt so pip never resolves a bare (CUDA) torch
$(INSTALLED): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --upgrade -c constraints.txt pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/crumple demo

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# two workers, each test file on one of them (its module fixtures built once): the suite
# took 9 min 15 s in one process on 2 cores, 6 min 12 s so
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile

test: lint
	$(PYTEST)

# the same, less the tests marked slow or browser (about a minute on 2 cores)
test-fast: lint
	$(PYTEST) -m "not slow and not browser"

BENCHED := $(VENV)/.benched
$(BENCHED): $(INSTALLED)
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev,bench]'
	touch $@

bench: $(BENCHED)
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/seed_grid.py
	$(BIN)/python benchmarks/general.py
	$(BIN)/python benchmarks/models.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/hessian.py
	$(BIN)/python benchmarks/verified_tiles.py
	$(BIN)/python benchmarks/curvature_tracking.py
	$(BIN)/python benchmarks/mode_connectivity.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
