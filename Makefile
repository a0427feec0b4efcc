# Two commands for a fresh machine (see README): `make run` and `make test`.
# The venv is built once; pip is told to keep the CPU torch wheel (constraints-cpu.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/tiny.yaml
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint docs bench compile images clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r constraints-cpu.txt
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed

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
