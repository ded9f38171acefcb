# Two commands on a fresh machine: `make run` (the embedded stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test test-busy lint bench clean

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
APT_TEST_PACKAGES := slapd ldap-utils libldap2-dev libsasl2-dev gcc
$(VENV)/.apt-test: | $(BIN)/python
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

bench: $(VENV)/.installed  ## print the benchmark figures as JSON
	$(BIN)/python -m bench.bench_core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
