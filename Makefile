# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean bench bench-quick torture

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/batchrun submit jobs/demo.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check batchrun tests
	$(BIN)/mypy batchrun

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: setup
	$(BIN)/python -m tools.bench

bench-quick: setup
	$(BIN)/python -m tools.bench --quick

torture: setup
	$(BIN)/python -m tools.torture
