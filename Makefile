# fedmine: `make demo` runs the demo federation, `make test` runs the test suite.
# Both create .venv and install the pinned dependencies (constraints.txt) first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install ui clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmine demo

test: $(STAMP)
	bash .ci/ensure-postgres
	$(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/fedmine ui

clean:
	rm -rf $(VENV) fedmine-demo mlruns/mlflow.db mlruns/artifacts
