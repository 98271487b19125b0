# meshlet: every target creates .venv and installs on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit protos bench soak dev-agent fmt clean screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("meshlet needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

## The main job: run the mesh on this machine and show what it does.
demo: $(STAMP)
	$(VENV)/bin/meshlet demo

## Everything CI runs: lint, types, layering, then the test suite.
test: lint typecheck
	$(PY) -m pytest

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
