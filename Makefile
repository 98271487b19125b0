# meshlet: every target creates .venv and installs on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit protos bench soak dev-agent fmt clean screenshot lock image

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("meshlet needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

## The main job: run the mesh on this machine and show what it does.
demo: $(STAMP)
	$(VENV)/bin/meshlet demo

## Everything CI runs: lint, types, layering, then the test suite (on two workers, pytest-xdist, each test file
## whole on one worker so its module fixtures start once); then the pipelines and the core sidecar suites
## again with the loops swapped (meshlet.runtime): the first pass runs the tests' own loops on asyncio's loop and
## the processes they start on the default (uvloop where installed), the second the tests' loops on uvloop and
## the processes on asyncio's loop, so that each side has run on both (about a minute and a half more).
LOOP_SUITES := tests/pipeline tests/integration/test_sidecar.py tests/integration/test_sidecar_fast_path.py \
               tests/integration/test_sidecar_inbound.py tests/integration/test_sidecar_loop.py tests/unit/test_runtime.py
test: lint typecheck
	$(PY) -m pytest -n 2 --dist loadfile
	MESHLET_TEST_LOOP=uvloop MESHLET_LOOP=asyncio $(PY) -m pytest $(LOOP_SUITES)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit

## Regenerate the checked-in Python from protos/**/*.proto.
protos: $(STAMP)
	$(PY) protos/generate.py

## Benchmarks print tables; they are never asserted.
bench: $(STAMP)
	$(PY) -m benchmarks

## A long run at a fixed rate while faults cycle, sampling memory, descriptors, tasks, threads and latency per
## minute, then the slope of each (target: none). 30 minutes; `make soak MINUTES=5` for less. Never asserted.
MINUTES ?= 30
soak: $(STAMP)
	$(PY) -m benchmarks.soak --minutes $(MINUTES)

## Re-render docs/demo.png from a real run (needs rsvg-convert: apt-get install librsvg2-bin); CI never runs it.
screenshot: $(STAMP)
	$(PY) docs/render_screenshot.py

dev-agent: $(STAMP)
	$(VENV)/bin/meshlet dev-agent

fmt: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## requirements.lock: every runtime dependency of the image pinned with its hashes (pip-tools' pip-compile, run
## on Python 3.11 as the image is, against PyPI alone), the shop-redis extra included (the image's shop may keep
## its state in Redis). Rerun after changing [project] dependencies or that extra; commit it.
LOCK_VENV := .lock-venv
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || (python3.11 -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools)
	env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile --quiet \
	    --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
	    --extra shop-redis --output-file requirements.lock pyproject.toml

## The image, tagged with the project's version and the commit it is built from (docs/kubernetes.md: releases).
VERSION  = $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
REVISION = $(shell git rev-parse HEAD)
IMAGE   ?= meshlet
image:
	docker build --build-arg MESHLET_VERSION=$(VERSION) --build-arg MESHLET_REVISION=$(REVISION) \
	    -t $(IMAGE):$(VERSION)-g$(shell git rev-parse --short=12 HEAD) .

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
