# `make demo` and `make test` are the two entry points; both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autoprune demo

test: $(STAMP)
	$(PY) -m ruff check autoprune tests experiments
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check autoprune tests experiments

clean:
	rm -rf $(VENV) build *.egg-info
