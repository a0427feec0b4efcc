# Two commands for a fresh machine (see README): `make run` and `make test`.
# The venv is built once from requirements-cpu.lock, which pins every package (dev extra and
# the CPU torch wheel included); `make lock` refreshes it on purpose (docs/testing.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements-cpu.lock
PIP_VERSION := 26.3
# pip-compile's flags: the lock holds versions only (no index URLs, no find-links of this
# machine), setuptools included so that the editable install builds with the locked one.
COMPILE_FLAGS := --quiet --extra dev --constraint constraints-cpu.txt --strip-extras \
	--allow-unsafe --no-emit-find-links --no-emit-index-url
CONFIG ?= configs/tiny.yaml
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock test-latest run test test-fast lint docs bench compile images clean

# Exactly the lock, then coldstart itself without resolving anything (--no-deps); pip check
# fails the install when the lock and pyproject.toml's ranges disagree.
$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

# Refresh the lock to the newest versions pyproject.toml's ranges allow; review `git diff`
# of the lock, run `make test`, and commit it on its own.
lock: install
	$(BIN)/pip-compile $(COMPILE_FLAGS) --upgrade --output-file $(LOCK) pyproject.toml

# What `make lock` would bring, tested before it lands: the lock `make lock` would write
# (.venv-latest/lock.txt, its diff against ours printed), installed into its own venv, then the
# whole suite. Run it by hand, e.g. weekly; nothing in the repository changes.
LATEST := .venv-latest
test-latest: install
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(BIN)/pip-compile $(COMPILE_FLAGS) --upgrade --output-file $(LATEST)/lock.txt pyproject.toml
	diff $(LOCK) $(LATEST)/lock.txt | grep '^[<>] [a-z0-9]' || echo "no version differs from $(LOCK)"
	$(LATEST)/bin/pip install --quiet pip==$(PIP_VERSION)
	$(LATEST)/bin/pip install --quiet -r $(LATEST)/lock.txt
	$(LATEST)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	$(LATEST)/bin/pip check
	$(LATEST)/bin/pytest -n auto $(PYTEST_ARGS)

run: install
	$(BIN)/coldstart run --config $(CONFIG)

# -n auto: one pytest worker per CPU (pytest-xdist); PYTEST_ARGS="-n 0" runs in one process.
test: install
	$(BIN)/pytest -n auto $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -n auto -m "not slow" $(PYTEST_ARGS)

# ruff (lint + format) on everything; mypy on the modules listed in pyproject's [tool.mypy] files.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: install
	$(BIN)/mkdocs build --strict --site-dir site

compile: install
	$(BIN)/coldstart compile --config $(CONFIG) --output pipeline.yaml

images:
	docker/build.sh

clean:
	rm -rf outputs pipeline.yaml .pytest_cache site
