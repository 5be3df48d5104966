# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# uv reads uv.lock; the same version that the dev extra pins (pyproject.toml).
UV_VERSION := $(shell sed -n 's/.*"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)
# uv uses the venv's Python, never one it would download.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test test-suite lint lock-check lock format readme bench soak deploy-test clean

# Exactly the versions in uv.lock: the project, its dependencies and the dev extra.
$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is needed (.python-version): make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) sync --quiet --frozen --extra dev --python $(PY)
	@touch $@

## lock: upgrade every dependency on purpose, within pyproject.toml's ranges; commit uv.lock.
lock: $(STAMP)
	$(UV) lock --upgrade --python $(PY)
	$(UV) sync --quiet --frozen --extra dev --python $(PY)

# uv.lock must still match pyproject.toml: a dependency added without `uv lock` fails here.
lock-check: $(STAMP)
	$(UV) lock --check --python $(PY)

## run: the embedded stack (Temporal dev server + UI, a worker, the API, a fake marketplace). Ctrl-C stops all.
run: $(STAMP)
	$(PY) -m devtools.run_local

## test: lint, type-check and the whole test suite against real Temporal servers.
## The suite runs on PYTEST_WORKERS processes (pytest-xdist), each with its own dev server and
## PostgreSQL; lint runs beside it, its output printed whole once it ends (both must pass).
# Seven on two cores: the crash tests wait out 10 s timeouts, and more workers fill the cores
# meanwhile (fresh clones: 4 workers 269 s, 6 228-237 s, 7 210-244 s, 8 220 s; docs/testing.md).
PYTEST_WORKERS ?= 7
# A bytecode cache for every Python process of the tests, in the venv: where
# PYTHONDONTWRITEBYTECODE is set (this machine, the image), each would compile what it imports
# from source, 2.9 s of CPU to import the API instead of 1.2 s, for each of the hundreds of
# processes (workers, APIs, marketplaces, pytest's own) the suite starts.
test test-suite lint readme: export PYTHONDONTWRITEBYTECODE :=
test test-suite lint readme: export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/pycache
test: $(STAMP) lock-check
	@$(MAKE) --no-print-directory --jobs=2 --output-sync=target lint test-suite

# First one collection alone, its output dropped (the suite reports what it finds): it fills
# the bytecode cache once, where the PYTEST_WORKERS processes starting at once would each compile
# the same modules from source.
# Then the suite: slowest first, the files that share a stack whole on one worker
# (tests/conftest.py): no slow test waits behind another, no stack starts twice.
test-suite: $(STAMP)
	@$(PY) -m pytest -q -p no:xdist --collect-only > /dev/null || true
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## readme: the sessions of README.md and docs/*.md run on fresh `make run` stacks, their outputs
## written into their pages (those that changed); tests/test_readme.py checks them in `make test`.
readme: $(STAMP)
	$(PY) -m devtools.readme_sessions record README.md docs/*.md

## bench: throughput and latency of the whole stack on this machine.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

## soak: 5 minutes of orders at 60 % of the capacity make bench measured (SOAK_ARGS=--overload: 2,000), a worker and the marketplace killed; then the invariant checker.
soak: $(STAMP)
	$(PY) -m devtools.soak $(SOAK_ARGS)

## deploy-test: the real docker-compose.yml brought up with Docker on this machine (docs/production.md).
deploy-test: $(STAMP)
	$(UV) sync --quiet --frozen --extra dev --extra deploy-test --python $(PY)
	$(PY) -m devtools.deploy_test $(DEPLOY_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
