# fashionsite: `make run` serves the site, `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint mypy mypy-baseline imports format stop services clean-test

setup: $(STAMP)

# Re-installs only when a requirements file changed; torch comes from local disk (pinned).
$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# Packages whose metadata asks for an unpinned torch: installed without dependencies.
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	@touch $@

run: setup
	$(PY) manage.py runsite

test: setup lint
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# lint: ruff, the import contracts of .importlinter, and mypy ([tool.mypy] in pyproject.toml)
# against mypy-baseline.txt: only errors not in the baseline fail (tools/mypy_baseline.py).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) tools/mypy_baseline.py check

imports: setup
	$(VENV)/bin/lint-imports

mypy: setup
	$(PY) tools/mypy_baseline.py check

# Rewrites mypy-baseline.txt from the current errors: after fixing some, or after moving code.
mypy-baseline: setup
	$(PY) tools/mypy_baseline.py update

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

stop: setup
	$(PY) -m fashionsite.embedded stop var
	$(PY) -m fashionsite.embedded stop var/test

services: setup
	$(PY) -m fashionsite.embedded status var
