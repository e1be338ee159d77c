# smoe: `make demo` fits the bundled image, `make test` runs the test suite.
# Both first set up the virtual environment, when needed, with the commands of the README's
# "Set-up by hand": python3 -m venv, pip install torch==2.13.0, pip install -e ".[test]".
# The install is redone only when pyproject.toml is newer than the stamp $(VENV)/.installed.

VENV        ?= .venv
PYTHON      ?= python3
DEMO_OUT    ?= smoe-out/demo
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test

help:
	@echo "make demo   set up $(VENV) if needed, then fit the bundled image into $(DEMO_OUT)/"
	@echo "make test   set up $(VENV) if needed, then run the tests (python -m pytest -q)"
	@echo "make setup  only set up $(VENV)"
	@echo "options: VENV=dir (default .venv), PYTHON=python3, DEMO_OUT=dir, PYTEST_ARGS='...'"

setup: $(STAMP)

# The environment itself: created once, never touched again by make.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The install. Order-only on the interpreter (its timestamp is the system Python's), so only a newer
# pyproject.toml, or a missing stamp, reinstalls. The stamp is written last: a failed install is retried.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/smoe fit --seed 0 -o $(DEMO_OUT)
	@echo "demo: outputs in $(DEMO_OUT)/ (open $(DEMO_OUT)/reconstruction.png and $(DEMO_OUT)/kernels.png)"

# pytest's exit status is make's: a failing test fails `make test`.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
