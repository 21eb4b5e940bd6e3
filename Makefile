# The README's two commands: `make demo` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest docs system-deps broker bench clean

$(STAMP): pyproject.toml scripts/fetch-player.sh
	bash scripts/fetch-player.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make demo: install into .venv and run the whole system on this machine
demo: $(STAMP)
	$(BIN)/nearcast demo

## make test: install .venv with the dev extra, then ruff, mypy and pytest
test: $(STAMP) system-deps broker lint typecheck pytest

system-deps:
	bash scripts/setup-system.sh

# The tests use the machine's Mosquitto on 127.0.0.1:1883; start it if nothing listens there.
broker:
	bash scripts/ensure-broker.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

docs: $(STAMP)
	{ echo "# Configuration reference"; echo; \
	  echo "Generated from the settings table by \`make docs\`; a test fails when it is stale."; echo; \
	  $(BIN)/nearcast config docs edge; echo; $(BIN)/nearcast config docs control; } > docs/configuration.md

bench: $(STAMP)
	@echo "see bench/README.md"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
