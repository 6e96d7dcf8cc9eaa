# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SM := $(VENV)/bin/sharpminima
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: install
	$(SM) data fetch mnist
	$(SM) reproduce --preset quick --out reports/quick

# pytest exits 5 when it collects no test; make treats any non-zero exit as failure.
test: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
