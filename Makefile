# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project (with the dev and trl extras) into it,
# every pip call constrained by requirements/constraints-cpu.txt: the exact versions RESULTS.md
# was measured with, torch the local CPU build so pip never pulls CUDA packages. The package's
# own requirements (pyproject.toml) are ranges; the pins live only here.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CONSTRAINTS := requirements/constraints-cpu.txt

VERL_VENV ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
VERL_CONSTRAINTS := requirements/constraints-verl.txt

# Scratch environments of the install checks, rebuilt from nothing on every run.
MIN_VENV ?= .venv-min
WHEEL_VENV ?= .venv-wheel

.PHONY: venv agent demo demo-quick test test-fast test-slow test-verl test-min test-wheel typecheck \
	docs lint format bench ci clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev,trl]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentropy demo

# Rebuild the shipped default agent (src/agentropy/agent/default/) from its recorded recipe,
# evaluate it and rewrite its build record. Minutes to an hour on 2 cores; `make demo` never needs it.
agent: $(STAMP)
	$(BIN)/agentropy bootstrap --rebuild

demo-quick: $(STAMP)
	$(BIN)/agentropy demo --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# mypy over src/ (configuration in pyproject.toml): the public API ships typed (py.typed).
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Default tier: everything not marked slow (< 1 minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Exit status 5 means "no test collected": not a failure while a tier is still empty.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint typecheck test-fast test-slow

# The documentation site (mkdocs-material + mkdocstrings); --strict turns warnings into errors.
docs: $(STAMP)
	$(BIN)/python docs/gen_metrics.py --check
	$(BIN)/mkdocs build --strict --site-dir site

# The declared lower bounds (requirements/constraints-min.txt) in a fresh environment: the fast
# tier must pass with the oldest versions pyproject.toml allows.
test-min:
	rm -rf $(MIN_VENV)
	$(PY) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q -c requirements/constraints-min.txt torch
	$(MIN_VENV)/bin/pip install -q -c requirements/constraints-min.txt -e ".[dev]"
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)
	rm -rf $(MIN_VENV)

# A new user's install: build the wheel, install it with core dependencies only (plus the CPU
# torch) in a fresh environment, run analyze, report and demo --quick on it.
test-wheel:
	bash .ci/plain_install.sh $(PY) $(WHEEL_VENV) $(CONSTRAINTS)

# verl 0.9 needs transformers < 5.11, so its adapter is tested in its own environment.
$(VERL_STAMP): requirements/verl.txt $(VERL_CONSTRAINTS) pyproject.toml
	test -x $(VERL_VENV)/bin/python || $(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install -q -c $(VERL_CONSTRAINTS) torch
	$(VERL_VENV)/bin/pip install -q -c $(VERL_CONSTRAINTS) -r requirements/verl.txt
	$(VERL_VENV)/bin/pip install -q --no-deps -e .
	! $(VERL_VENV)/bin/pip list 2>/dev/null | grep -i nvidia
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest -q tests/verl $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# What CI runs (.ci/run).
ci: test docs test-verl test-wheel

clean:
	rm -rf $(VENV) $(VERL_VENV) $(MIN_VENV) $(WHEEL_VENV) site dist build .pytest_cache \
		.ruff_cache .hypothesis .mypy_cache
