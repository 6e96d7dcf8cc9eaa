# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SM := $(VENV)/bin/sharpminima
PYTEST_ARGS ?=

.PHONY: install install-test demo test test-all lint bench bench-peers check-published report-check clean

# The core install (what `make demo` needs); the test install adds the optional integrations
# (Lightning, Hugging Face, TensorBoard, W&B, MLflow) and the test tools.
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: install
	$(SM) data fetch mnist
	$(SM) reproduce --preset quick --out reports/quick

# pytest exits 5 when it collects no test; make treats any non-zero exit as failure.
test: install-test
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: install
	$(PY) benchmarks/bench_train.py

# The peers of bench_peers.py, pinned, beside (not in) the virtualenv: see pyproject's `bench`.
PEERS := .peers
$(PEERS)/.installed:
	$(PY) -m pip install --quiet --no-deps --target $(PEERS) hessian-eigenthings==1.0.0a5 \
	    curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 linear_operator==0.6.1 \
	    einops==0.8.2 einconv==0.1.0 unfoldNd==0.2.3 opt_einsum==3.4.0
	touch $@

bench-peers: install $(PEERS)/.installed
	$(PY) benchmarks/bench_peers.py --peers-path $(PEERS)

# Before a release: every folder in docs/results must have been made by the code at HEAD.
check-published: install
	$(PY) scripts/check_published.py docs/results README.md

# Optional, not part of `make test`: render every committed HTML report in headless Chromium
# (the Debian package `chromium`, where installed) in a 1,400-px window; fails on broken
# images and table cells past the page's edge. Without a browser it says it skipped.
report-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/report_check.py docs/results --width 1400

clean:
	rm -rf $(VENV) $(PEERS) build dist src/*.egg-info .pytest_cache
