# Every target runs exactly what CI (.ci/run) and the README say.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo standins test compat reliability bench lint typecheck format manifest clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[opencti,dev]'
	touch $(STAMP)

# The whole pipeline against local stand-ins of CTX and OpenCTI (tests/demo.py); leaves demo-spool/
# (kept by the next run; `make demo ARGS=--fresh` starts over).
demo: install
	$(PY) -m tests.demo $(ARGS)

# Both stand-ins alone, on 127.0.0.1 with the demo's data, until Ctrl-C: prints the export lines
# that point ctx-fetcher and ctx-uploader at them (tests/demo.py --serve; any free ports, or
# `make standins ARGS='--ctx-port 8000 --opencti-port 8080'`).
standins: install
	$(PY) -m tests.demo --serve $(ARGS)

test: install
	$(PY) -m pytest -q

# The uploader's end-to-end tests once per supported pycti (6.5.10, 6.8.17, newest 6.9, newest 7.x),
# each in its own .venv-compat/<version>/, against a stand-in enforcing that platform's schema.
compat:
	$(PYTHON) -m tests.compat.run

# The full crash/outage/hostile-input suite; `make test` runs a shorter version of it.
reliability: install
	CTX_RELIABILITY_FULL=1 $(PY) -m pytest -q tests/reliability

# Benchmarks (not part of `make test`); writes BENCHMARKS.md.
bench: install
	$(PY) -m tests.bench

# __metadata__/connector_manifest.json and connector_config_schema.json from the settings models
# (tools/metadata.py); tests/test_metadata.py fails while they are stale.
manifest: install
	$(PY) -m tools.metadata

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .venv-compat build *.egg-info .pytest_cache .mypy_cache .ruff_cache spool demo-spool
