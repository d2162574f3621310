# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint docs test-floors clean bench bench-quick torture

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

demo: setup
	$(BIN)/batchrun submit jobs/demo.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check batchrun tests tools
	$(BIN)/ruff format --check batchrun tests tools
	$(BIN)/mypy batchrun tools
	$(BIN)/lint-imports
	@# The docs site, --strict: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails. Built into a
	@# throwaway directory (no --quiet: it hides the warnings that --strict counts).
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; \
	status=$$?; rm -rf "$$site"; exit $$status

# The docs site on http://127.0.0.1:8000, rebuilt as pages change.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The suite again with every runtime dependency at the lowest version pyproject.toml allows.
FLOORS := .venv-floors
test-floors:
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) tools/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install --quiet -c $(FLOORS)/constraints.txt -e '.[dev,ray]'
	$(FLOORS)/bin/python -m pip list --format=freeze | grep -iE '^(aiohttp|aiolimiter|orjson|click|tqdm|pyarrow|pyyaml|numpy|jsonschema.rs|pydantic|ray)=='
	$(FLOORS)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(FLOORS) runs site .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: setup
	$(BIN)/python -m tools.bench

bench-quick: setup
	$(BIN)/python -m tools.bench --quick

torture: setup
	$(BIN)/python -m tools.torture
