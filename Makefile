# Two commands on a fresh machine: `make run` (the embedded stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test test-busy test-reference lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# pip prints its progress: the first install takes ~2 minutes (bluesky, ophyd, tiled...).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing qserver and its dependencies into $(VENV) (the first run takes ~2 minutes)..."
	$(BIN)/pip install --progress-bar on -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "installing qserver with its test tools into $(VENV) (the first run takes ~2 minutes)..."
	$(BIN)/pip install --progress-bar on -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed  ## install, then start the embedded stack (Ctrl-C stops it)
	$(BIN)/qserver stack up $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check qserver services tests bench
	$(BIN)/mypy qserver services

test: $(VENV)/.installed-test  ## install with test extras, lint, run the whole suite
	$(MAKE) lint
	$(BIN)/pytest $(ARGS)

test-busy: $(VENV)/.installed-test  ## the whole suite beside two CPU-bound busy loops
	$(BIN)/python -m tests.run_busy -- $(MAKE) test ARGS="$(ARGS)"

# bluesky-queueserver-api's own tests against our stack (docs/reference-tests.md), from a
# scratch venv: its bluesky-queueserver dependency installs another `qserver` script.
REF_VENV ?= .venv-reference
REF_SITE = $(REF_VENV)/lib/python$(shell $(REF_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)/site-packages
REF_WORKERS ?= 6
REF_ARGS ?=

$(REF_VENV)/.installed: tests/reference/requirements.txt
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install -q --upgrade pip
	$(REF_VENV)/bin/pip install --progress-bar on -r tests/reference/requirements.txt
	touch $@

test-reference: $(VENV)/.installed $(REF_VENV)/.installed  ## the reference client's tests (HTTP; REFTESTS_ZMQ=1: 0MQ too)
	PYTHONPATH=tests/reference REFTESTS_QSERVER_PYTHON=$(abspath $(BIN)/python) \
	$(REF_VENV)/bin/python -m pytest -c tests/reference/pytest.ini --rootdir $(REF_SITE) \
		-n $(REF_WORKERS) --pyargs bluesky_queueserver_api.tests $(REF_ARGS)

bench: $(VENV)/.installed  ## print the benchmark figures as JSON
	$(BIN)/python -m bench.bench_core

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache .mypy_cache .ruff_cache
