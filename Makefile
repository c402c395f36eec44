# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project (with the dev and trl extras) into it,
# torch pinned first so pip takes the local CPU wheel instead of pulling CUDA packages.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

VERL_VENV ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

.PHONY: venv demo demo-quick test test-fast test-slow test-verl lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,trl]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentropy demo

demo-quick: $(STAMP)
	$(BIN)/agentropy demo --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Default tier: everything not marked slow (< 1 minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Exit status 5 means "no test collected": not a failure while a tier is still empty.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint test-fast test-slow

# verl 0.9 needs transformers < 5.11, so its adapter is tested in its own environment.
$(VERL_STAMP): requirements/verl.txt pyproject.toml
	test -x $(VERL_VENV)/bin/python || $(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install -q torch==2.13.0
	$(VERL_VENV)/bin/pip install -q -r requirements/verl.txt
	$(VERL_VENV)/bin/pip install -q --no-deps -e .
	! $(VERL_VENV)/bin/pip list 2>/dev/null | grep -i nvidia
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest -q tests/verl $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(VERL_VENV) .pytest_cache .ruff_cache .hypothesis
