# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself, with what it needs.
# One .venv, grown in steps, each step's stamp inside it: the demo's step installs batchrun and its runtime
# dependencies only; the test tools (and Ray, for the Ray tests and benchmarks) are added to the same venv when a
# target needs them, so `make demo` then `make test` installs nothing twice, and a re-run installs nothing at all.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
DEV_RAY := $(VENV)/.installed-dev-ray

.PHONY: setup demo test lint docs test-floors clean bench bench-quick torture

# Everything a developer uses: the runtime, the test and lint tools, and Ray (what CI installs).
setup: $(DEV_RAY)

# batchrun and its runtime dependencies (pyproject.toml's `dependencies`): all the demo needs.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The test, lint and docs tools added (the `dev` extra).
$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Ray added as well (the `ray` extra): the suite's Ray tests and the Ray benchmarks need it.
$(DEV_RAY): $(DEV)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

demo: $(RUNTIME)
	$(BIN)/batchrun submit jobs/demo.yaml

test: $(DEV_RAY)
	$(BIN)/python -m pytest

lint: $(DEV)
	$(BIN)/ruff check batchrun tests tools
	$(BIN)/ruff format --check batchrun tests tools
	$(BIN)/mypy batchrun tools
	$(BIN)/lint-imports
	@# The docs site, --strict: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails. Built into a
	@# throwaway directory (no --quiet: it hides the warnings that --strict counts).
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; \
	status=$$?; rm -rf "$$site"; exit $$status

# The docs site on http://127.0.0.1:8000, rebuilt as pages change.
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The suite again with every runtime dependency at the lowest version pyproject.toml allows.
FLOORS := .venv-floors
test-floors:
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) tools/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install --quiet -c $(FLOORS)/constraints.txt -e '.[dev,ray]'
	$(FLOORS)/bin/python -m pip list --format=freeze | grep -iE '^(aiohttp|aiolimiter|orjson|click|tqdm|pyarrow|pyyaml|numpy|jsonschema.rs|pydantic|imagesize|ray)=='
	$(FLOORS)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(FLOORS) runs site .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: $(DEV_RAY)
	$(BIN)/python -m tools.bench

bench-quick: $(DEV_RAY)
	$(BIN)/python -m tools.bench --quick

torture: $(RUNTIME)
	$(BIN)/python -m tools.torture
