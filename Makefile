# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)
PROTOS := $(shell find proto -name '*.proto')
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help deps run test policy-test lint typecheck unit integration gen clean bench

help:
	@echo "make run    start OPA and the sidecar in dev mode (foreground; Ctrl-C stops both)"
	@echo "make test   policy checks, lint, type checks and the whole test suite"
	@echo "make gen    regenerate sidecar/_proto from proto/"
	@echo "make bench  benchmark against the floor (docs/performance.md); not part of make test"

$(VENV)/.installed: pyproject.toml
	scripts/bootstrap.sh venv
	touch $@

$(TOOLS)/.opa: scripts/bootstrap.sh
	scripts/bootstrap.sh opa
	touch $@

sidecar/_proto/.stamp: $(PROTOS) $(VENV)/.installed scripts/gen-proto.sh
	scripts/gen-proto.sh
	touch $@

gen: sidecar/_proto/.stamp

deps: $(VENV)/.installed $(TOOLS)/.opa gen

run: deps
	scripts/dev-run.sh

policy-test: $(TOOLS)/.opa
	opa fmt --list --fail rego/
	opa check --strict rego/
	opa test rego/

lint: deps
	$(VENV)/bin/ruff check sidecar tests bench
	$(VENV)/bin/ruff format --check sidecar tests bench

typecheck: deps
	$(VENV)/bin/mypy

test: deps policy-test lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .tools var .pytest_cache .mypy_cache .ruff_cache sidecar/_proto/.stamp

bench: deps
	$(PY) -m bench.run $(BENCH_ARGS)
