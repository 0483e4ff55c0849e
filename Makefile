# `make demo` and `make test` work on a fresh clone with nothing but Python 3.11+:
# they create .venv and install the pinned versions from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: demo test lint bench clean

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m airflow_provider_lambdamr.demo --dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_amplab.py --size-mb 400 --repeat 3 --overhead --scaling 100,400,1600

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
