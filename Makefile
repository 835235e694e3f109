# streamscribe — the two commands of the README, and their set-up.
#   make demo   set up everything, start the local broker, run the pipeline on a bundled recording
#   make test   set up everything, run the whole test suite (unit + integration on a real broker)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit integration setup system-deps lint bench clean broker-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

setup: system-deps $(STAMP)

demo: setup
	$(BIN)/python -m streamscribe.demo

test: setup
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not integration"

integration: setup
	$(BIN)/python -m pytest tests -m integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas processors

bench: setup
	$(BIN)/python bench/run_all.py

broker-stop: $(STAMP)
	$(BIN)/streamscribe broker stop

clean:
	-$(BIN)/streamscribe broker stop
	rm -rf $(VENV) .cache .pytest_cache
