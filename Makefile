# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)
PROTOS := $(shell find proto -name '*.proto')
PYTEST_ARGS ?=
LINT_DIRS := $(wildcard sidecar tests bench examples fuzz scripts/*.py)
REGO_MIN_COVERAGE ?= 90

.DEFAULT_GOAL := help
.PHONY: help deps run demo demo-mcp test test-spire policy-test lint typecheck unit integration gen \
	clean redis postgres chromium axe bench-propagation fuzz soak bench

help:
	@echo "make run    start OPA and the sidecar in dev mode (foreground; Ctrl-C stops both)"
	@echo "make demo   OPA + sidecar + example resource server + example agent, traced, then stop"
	@echo "make demo-mcp  OPA + sidecar + example MCP server + example MCP agent, traced"
	@echo "make deploy-check  validate deploy/ and the Dockerfile (promtool, kubeconform, ...)"
	@echo "make test   policy checks, lint, type checks and the whole test suite"
	@echo "make gen    regenerate sidecar/_proto from proto/"
	@echo "make test-spire  opt-in: build SPIRE (~7 min once) and run the real SPIRE tests"
	@echo "make bench-propagation  fleet revocation latency and Redis sizing (bench/results/)"
	@echo "make fuzz   coverage-guided fuzzing of the JWT parsing path (FUZZ_SECONDS, default 180)"
	@echo "make soak   simulated agents against a real sidecar (SOAK_SECONDS, default 600)"
	@echo "make bench  benchmark against the floor (docs/performance.md); not part of make test"

$(VENV)/.installed: pyproject.toml
	scripts/bootstrap.sh venv
	touch $@

$(TOOLS)/.opa: scripts/bootstrap.sh
	scripts/bootstrap.sh opa
	touch $@

# Validators for deploy/ (scripts/deploy-check.sh); each is built or fetched once and cached.
$(TOOLS)/.promtool: scripts/bootstrap.sh
	scripts/bootstrap.sh promtool
	touch $@

$(TOOLS)/.kubeconform: scripts/bootstrap.sh
	scripts/bootstrap.sh kubeconform
	touch $@

$(TOOLS)/.kustomize: scripts/bootstrap.sh
	scripts/bootstrap.sh kustomize
	touch $@

$(TOOLS)/.compose-check: scripts/bootstrap.sh $(wildcard scripts/compose-check/*)
	scripts/bootstrap.sh compose-check
	touch $@

.tools/k8s-schemas/.stamp: scripts/bootstrap.sh scripts/k8s-schemas.py $(VENV)/.installed
	scripts/bootstrap.sh k8s-schemas
	touch $@

.tools/crd-check/.stamp: scripts/bootstrap.sh $(wildcard scripts/crd-check/*)
	scripts/bootstrap.sh crd-check
	touch $@

.PHONY: deploy-tools deploy-check
DEPLOY_TOOLS := $(TOOLS)/.promtool $(TOOLS)/.kubeconform $(TOOLS)/.kustomize \
	$(TOOLS)/.compose-check .tools/k8s-schemas/.stamp .tools/crd-check/.stamp

deploy-tools: $(DEPLOY_TOOLS)

sidecar/_proto/.stamp: $(PROTOS) $(VENV)/.installed scripts/gen-proto.sh
	scripts/gen-proto.sh
	touch $@

gen: sidecar/_proto/.stamp

deps: $(VENV)/.installed $(TOOLS)/.opa gen

run: deps
	scripts/dev-run.sh

demo: deps
	$(PY) examples/demo.py

# The MCP example server and agent against OPA and the sidecar (docs/mcp.md).
demo-mcp: deps
	$(PY) examples/demo_mcp.py

policy-test: $(TOOLS)/.opa
	opa fmt --list --fail rego/
	opa check --strict rego/
	opa test rego/
	opa test --coverage --format=json rego/ | python3 scripts/rego-coverage.py --min $(REGO_MIN_COVERAGE)
	opa inspect -a --format json rego/ | python3 scripts/rego-reasons.py docs/policy-authoring.md
	@if scripts/bootstrap.sh regal; then \
	  echo "regal lint rego/ ($$(regal version | sed -n 's/^Version: *//p'))"; \
	  regal lint rego/; \
	else \
	  echo "*** REGAL NOT RUN: scripts/bootstrap.sh regal could not install Regal (error above;" >&2; \
	  echo "*** it needs Go and the Go module proxy). The opa checks above passed." >&2; \
	fi

lint: deps
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

typecheck: deps
	$(VENV)/bin/mypy

# Debian's redis-server for the fleet tests (throwaway instances on free loopback ports).
redis:
	scripts/bootstrap.sh redis

# Debian's PostgreSQL for the broker tests (throwaway clusters in temporary directories).
postgres:
	scripts/bootstrap.sh postgres

# Debian's chromium and the locked axe-core for the console's browser tests (tests/browser).
chromium:
	scripts/bootstrap.sh chromium

.tools/axe/.stamp: scripts/bootstrap.sh scripts/axe/package.json scripts/axe/package-lock.json
	scripts/bootstrap.sh axe
	touch $@

axe: .tools/axe/.stamp

deploy-check: deps deploy-tools
	scripts/deploy-check.sh

test: deps redis postgres chromium axe policy-test lint typecheck deploy-check
	$(PY) -m pytest $(PYTEST_ARGS)

# Opt-in: a real SPIRE server and agent issue a JWT-SVID that the sidecar must accept.
test-spire: deps
	scripts/build-spire.sh
	SPIRE_BIN_DIR=$(CURDIR)/.tools/spire $(PY) -m pytest tests/integration/test_spire.py $(PYTEST_ARGS)

bench-propagation: deps redis
	$(PY) bench/propagation.py
	$(PY) bench/fleet_sizing.py

clean:
	rm -rf $(VENV) .tools var .pytest_cache .mypy_cache .ruff_cache sidecar/_proto/.stamp

# Outside CI: atheris (coverage-guided) over the JWT parsing path; Hypothesis if atheris is
# not installable. FUZZ_SECONDS=600 make fuzz
FUZZ_SECONDS ?= 180
fuzz: deps
	scripts/bootstrap.sh fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) fuzz/fuzz_jwt.py

# N simulated agents against a real sidecar and OPA, then invariant checks (bench/soak.py).
# SOAK_SECONDS=60 make soak   (CI-sized); default 10 minutes.
SOAK_SECONDS ?= 600
SOAK_AGENTS ?= 8
soak: deps
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS) --agents $(SOAK_AGENTS)

bench: deps
	$(PY) -m bench.run $(BENCH_ARGS)
