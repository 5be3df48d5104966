# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

## run: the embedded stack (Temporal dev server + UI, a worker, the API, a fake marketplace). Ctrl-C stops all.
run: $(STAMP)
	$(PY) -m devtools.run_local

## test: lint, type-check and the whole test suite against real Temporal servers.
test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## bench: throughput and latency of the whole stack on this machine.
bench: $(STAMP)
	$(PY) -m devtools.bench

## soak: 2,000 orders over 5 minutes on real processes, a worker and the marketplace killed; then the invariant checker.
soak: $(STAMP)
	$(PY) -m devtools.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
