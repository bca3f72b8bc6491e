# Everything a fresh machine needs comes from here: python3 -m venv + pip from PyPI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./pub

.PHONY: install serve test lint bench clean

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
	$(BIN)/mypy cachesrv

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) *.egg-info
