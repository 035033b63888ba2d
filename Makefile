# trustmesh: `make demo` runs the mesh, `make test` runs the suite. Both install into .venv first.
# The interpreter .venv is made from: scripts/pick-python.sh says which and why.
PY ?= $(shell sh scripts/pick-python.sh)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint unit demo bench screenshots clean

install: $(STAMP)

# Reinstall only when the project's metadata changes, so `make test` is fast on a warm tree.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check trustmesh tests bench
	$(BIN)/mypy

# Two workers (pytest-xdist): the suite mostly waits (SVID lifetimes, timeouts, process
# start-up), so two run in about half the time on these 2-core machines. PYTEST_WORKERS=0
# runs it in one process.
PYTEST_WORKERS ?= 2

unit: install
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint unit

demo: install
	$(BIN)/trustmesh demo $(DEMO_ARGS)

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Regenerates the GUI screenshots the README shows (needs Debian's chromium: scripts/ci-system-deps.sh).
screenshots: install
	$(BIN)/python -m trustmesh.control.gui.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
