# Everything a fresh machine needs comes from here: python3 -m venv + pip from PyPI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./pub

.PHONY: install serve test lint bench bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/cachesrv serve --data $(DATA)

lint: install
	$(BIN)/ruff check cachesrv tests bench
	$(BIN)/mypy cachesrv tests

test: lint
	$(BIN)/pytest

# The full benchmark (builds a real Go build cache corpus once, minutes; see bench/README.md).
bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run --corpus go --small-files npm --json bench/results/go.json

bench-quick: install
	$(BIN)/python -m bench.run --quick --json bench/results/quick.json

clean:
	rm -rf $(VENV) *.egg-info
