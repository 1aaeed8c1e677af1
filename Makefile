# Yumen — build, demo, test, bench.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PROTOS := $(wildcard protos/yumen/v1/*.proto)

.PHONY: demo test test-stress infra bench protos venv system-deps clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	@command -v bwrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap; }
	@command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap libseccomp2; }

demo: venv system-deps
	$(VENV)/bin/yumen demo

# Everything the test suite needs, installed and started when missing (as root on Debian 12):
# bubblewrap, debootstrap, Docker with gVisor (runsc), the sandbox runtime and its image,
# PostgreSQL. Quick when everything is already up. See scripts/setup_infra.sh.
infra: venv
	@bash scripts/setup_infra.sh >/dev/null

# The whole suite; the PostgreSQL DSN from setup_infra.sh reaches pytest in the environment.
test: venv
	@dsn="$$(bash scripts/setup_infra.sh)" && \
	  YUMEN_TEST_POSTGRES_DSN="$$dsn" $(VPY) -m pytest -q

# The e2e and sandbox suites plus the tests marked "stress" (long load and fuzzing runs),
# while scripts/load.py keeps every core busy (started and stopped by tests/conftest.py).
test-stress: venv
	@dsn="$$(bash scripts/setup_infra.sh)" && \
	  YUMEN_TEST_POSTGRES_DSN="$$dsn" $(VPY) -m pytest -q --stress

bench: venv system-deps
	$(VPY) -m bench.run

protos: venv
	$(VPY) protos/generate.py

clean:
	rm -rf .yumen-demo .pytest_cache
