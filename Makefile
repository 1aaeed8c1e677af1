# Yumen — build, demo, test, bench.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PROTOS := $(wildcard protos/yumen/v1/*.proto)

.PHONY: demo test test-stress bench protos venv system-deps clean

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

test: venv system-deps
	$(VPY) -m pytest -q

# Long load and fuzzing runs (tests marked "stress").
test-stress: venv system-deps
	$(VPY) -m pytest -q -m stress

bench: venv system-deps
	$(VPY) -m bench.run

protos: venv
	$(VPY) protos/generate.py

clean:
	rm -rf .yumen-demo .pytest_cache
