# Two commands on a fresh machine: `make run` (the embedded stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# 1: `make test` also runs the reference client's own tests over HTTP (test-reference); by
# default only for the whole suite (no ARGS).
REFERENCE ?= $(if $(ARGS),0,1)
REF_LOG ?= $(abspath .reference-tests.log)

REF_VENV ?= .venv-reference
REF_V001_VENV ?= .venv-reference-v001
BENCH_REF_VENV ?= .venv-bench-ref

.PHONY: run test test-busy lint bench bench-compare bench-profile clean reference-clients webui webui-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# pip prints its progress: the first install takes ~2 minutes (bluesky, ophyd, tiled...).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing qserver and its dependencies into $(VENV) (the first run takes ~2 minutes)..."
	$(BIN)/pip install --progress-bar on -e .
	touch $@

# System packages of the tests: python-ldap builds against libldap; slapd serves the LDAP
# login tests. Installed with apt when missing (as root; a fresh Debian has none of them),
# with services kept from starting (the tests run their own slapd on a free port).
# chromium: the web page's browser tests (Playwright drives Debian's build, ADR 26).
APT_TEST_PACKAGES := slapd ldap-utils libldap2-dev libsasl2-dev gcc chromium
$(VENV)/.apt-test: Makefile | $(BIN)/python  # again when the list changes: adds what is missing
	@missing=$$(for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "as root: apt-get install $$missing"; exit 1; fi; \
	  echo "installing system packages for the tests: $$missing"; \
	  policy=/usr/sbin/policy-rc.d; made=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; made=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; [ -n "$$made" ] && rm -f $$policy; exit $$rc; \
	fi
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python $(VENV)/.apt-test
	@echo "installing qserver with its test tools into $(VENV) (the first run takes ~2 minutes)..."
	$(BIN)/pip install --progress-bar on -e '.[test]'
	touch $@ $(VENV)/.installed

# The reference's clients, each in a venv of its own (bluesky-queueserver's `qserver` script
# would replace ours in .venv), for the tests that drive the 0MQ bridge and the gateway with
# them: made once (~1 minute from pip's cache), again only when their requirements change.
$(REF_VENV)/.installed: tests/reference/requirements.txt
	@echo "installing the reference's clients into $(REF_VENV) (the first run takes ~1 minute)..."
	rm -rf $(REF_VENV)
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install -q --upgrade pip
	$(REF_VENV)/bin/pip install -q -r tests/reference/requirements.txt
	touch $@

$(REF_V001_VENV)/.installed: tests/reference/requirements-v001.txt tests/reference/v001_sitecustomize.py
	rm -rf $(REF_V001_VENV)
	$(PYTHON) -m venv $(REF_V001_VENV)
	$(REF_V001_VENV)/bin/pip install -q --no-deps -r tests/reference/requirements-v001.txt
	cp tests/reference/v001_sitecustomize.py "$$($(REF_V001_VENV)/bin/python -c \
	  'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sitecustomize.py"
	touch $@

reference-clients: $(REF_VENV)/.installed $(REF_V001_VENV)/.installed

run: $(VENV)/.installed  ## install, then start the embedded stack (Ctrl-C stops it)
	$(BIN)/qserver stack up $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check qserver services tests bench
	$(BIN)/mypy qserver services

test: $(VENV)/.installed-test reference-clients  ## install with test extras, lint, run the whole suite
	$(MAKE) lint
	$(MAKE) webui-check
ifeq ($(REFERENCE),1)
	@# The reference client's own tests run beside the suite (both mostly wait on plans and
	@# timeouts: side by side they take little more than the suite alone); their output goes
	@# to $(REF_LOG) and its end is shown after the suite. Either failing fails `make test`.
	@echo "the reference client's own tests run beside the suite; their output: $(REF_LOG)"
	@$(MAKE) --no-print-directory test-reference > $(REF_LOG) 2>&1 & ref=$$!; \
	  $(BIN)/pytest $(ARGS); rc=$$?; \
	  wait $$ref; rrc=$$?; \
	  echo "---- the reference client's own tests (make test-reference; all of it: $(REF_LOG))"; \
	  grep -E '^(FAILED|ERROR) ' $(REF_LOG); tail -n 25 $(REF_LOG); \
	  echo "suite: exit $$rc; the reference client's tests: exit $$rrc"; \
	  [ $$rc = 0 ] && [ $$rrc = 0 ]
else
	$(BIN)/pytest $(ARGS)
endif

test-busy: $(VENV)/.installed-test  ## the whole suite beside two CPU-bound busy loops
	$(BIN)/python -m tests.run_busy -- $(MAKE) test ARGS="$(ARGS)"

bench: $(VENV)/.installed  ## print the benchmark figures as JSON
	$(BIN)/python -m bench.bench_core

# The web page (ADR 26): sources in webui/, built with npm into the Python package so that
# `pip install` needs no Node. `make webui` rebuilds it; `make webui-check` (part of `make
# test`) fails when the committed build is not what the sources build to.
WEBUI_TMP ?= /tmp/qserver-webui-check-$(shell id -u)
webui/node_modules/.installed: webui/package.json webui/package-lock.json
	cd webui && npm ci --no-audit --no-fund
	touch $@

webui: webui/node_modules/.installed  ## rebuild the web page into services/gateway/webui/
	cd webui && npm run build

webui-check: webui/node_modules/.installed
	rm -rf $(WEBUI_TMP)
	cd webui && QSERVER_WEBUI_OUT=$(WEBUI_TMP) npm run build >/dev/null
	@diff -r $(WEBUI_TMP) services/gateway/webui >/dev/null || { \
	  echo "services/gateway/webui/ is not the build of webui/: run 'make webui' and commit it"; \
	  diff -rq $(WEBUI_TMP) services/gateway/webui; exit 1; }
	@echo "the shipped web page is the build of webui/"

# The reference measured by `make bench-compare`, in a scratch venv of its own (never .venv:
# bluesky-queueserver's `qserver` script would replace ours), and Debian's redis-server
# (installed by apt when missing, kept from starting: the benchmark runs its own).
$(BENCH_REF_VENV)/.installed: bench/reference-requirements.txt
	@echo "installing the reference into $(BENCH_REF_VENV) (the first run takes a few minutes)..."
	rm -rf $(BENCH_REF_VENV)
	$(PYTHON) -m venv $(BENCH_REF_VENV)
	$(BENCH_REF_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_REF_VENV)/bin/pip install -q -r bench/reference-requirements.txt
	touch $@

$(BENCH_REF_VENV)/.redis: | $(BIN)/python
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "as root: apt-get install redis-server"; exit 1; fi; \
	  policy=/usr/sbin/policy-rc.d; made=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; made=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	  rc=$$?; [ -n "$$made" ] && rm -f $$policy; exit $$rc; \
	fi
	mkdir -p $(BENCH_REF_VENV) && touch $@

# Ours (the default stack of `make run`) against the reference, alternately, in one run: JSON,
# then the table of ratios (> 1: ours is better). ARGS="--quick" checks the tool in ~6 minutes.
bench-compare: $(VENV)/.installed-test $(BENCH_REF_VENV)/.installed $(BENCH_REF_VENV)/.redis  ## ours vs the reference, side by side
	$(BIN)/python -m bench.bench_compare $(ARGS)

# Where a status and a queue_item_add spend their time (JSON); py-spy (PyPI) samples the
# queue service, from the scratch venv (it is a tool of the benchmark, not of qserver).
$(BENCH_REF_VENV)/bin/py-spy: $(BENCH_REF_VENV)/.installed
	$(BENCH_REF_VENV)/bin/pip install -q py-spy

bench-profile: $(VENV)/.installed-test $(BENCH_REF_VENV)/bin/py-spy  ## profile status and queue_item_add
	$(BIN)/python -m bench.profile_requests --py-spy $(BENCH_REF_VENV)/bin/py-spy $(ARGS)

# bluesky-queueserver-api's own tests (its tests/ package) against our stack, run from
# .venv-reference: docs/reference-tests.md. REFTESTS_ZMQ=1 adds the 0MQ cases.
REF_WORKERS ?= 6
REF_ARGS ?=
# Known failures, each with its owner: strict xfails (REF_EXPECTED= gives the raw pass/fail).
REF_EXPECTED ?= tests/reference/expected-failures.txt
REF_SITE = $(shell $(REF_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(REF_VENV)/.installed-tests: tests/reference/requirements-tests.txt $(REF_VENV)/.installed
	$(REF_VENV)/bin/pip install -q -r tests/reference/requirements-tests.txt
	touch $@

.PHONY: test-reference
test-reference: $(VENV)/.installed $(REF_VENV)/.installed-tests  ## the reference client's own tests
	PYTHONPATH=tests/reference REFTESTS_QSERVER_PYTHON=$(abspath $(BIN)/python) \
	REFTESTS_EXPECTED=$(REF_EXPECTED) \
	$(REF_VENV)/bin/python -m pytest -c tests/reference/pytest.ini --rootdir $(REF_SITE) \
		-n $(REF_WORKERS) --pyargs bluesky_queueserver_api.tests $(REF_ARGS)

clean:
	rm -rf $(VENV) $(REF_VENV) $(REF_V001_VENV) $(BENCH_REF_VENV) .pytest_cache .mypy_cache .ruff_cache
