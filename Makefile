# fedmine: `make demo` runs the demo federation, `make test` runs the checks and the test suite,
# `make test-fast` the unit tests only. All create .venv and install the pinned dependencies
# (constraints.txt) first; the tests also need PostgreSQL and Chromium, which .ci/ensure-postgres and
# .ci/ensure-chromium install from Debian when missing. `make lint` runs the checks alone: ruff, mypy,
# import-linter, deptry. The suites run on two pytest-xdist workers, each taking a whole test file at a time
# (TEST_WORKERS=0 runs them in this process).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

LINT_FORMAT ?= $(BIN)/ruff format --check .

.PHONY: demo test test-fast lint lint-imports install ui clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmine demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(LINT_FORMAT)
	$(BIN)/mypy
	$(MAKE) --no-print-directory lint-imports
	$(BIN)/deptry .

lint-imports: $(STAMP)
	$(BIN)/lint-imports --no-logo

test: lint
	bash .ci/ensure-postgres
	bash .ci/ensure-chromium
	$(PYTEST)

test-fast: $(STAMP)
	bash .ci/ensure-postgres
	bash .ci/ensure-chromium
	$(PYTEST) -m "not slow"

ui: $(STAMP)
	$(BIN)/fedmine ui

clean:
	rm -rf $(VENV) fedmine-demo mlruns/mlflow.db mlruns/artifacts
