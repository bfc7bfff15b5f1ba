# The README's commands. Every target installs what it needs, so each works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv never downloads an interpreter: Python 3.13 comes from the machine (PATH, or pyenv's versions).
export UV_PYTHON_DOWNLOADS := never
export DAGSTER_HOME := $(CURDIR)/.dagster
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTHON = $(shell for candidate in python3.13 $$(command -v pyenv >/dev/null && ls -d "$$(pyenv root)"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V | tail -1); do \
	"$$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null && { command -v "$$candidate"; break; }; done)
RUN = $(UV) run --frozen --python "$(PYTHON)"

.PHONY: help install demo test lint format dev sandbox bench

help:
	@echo "make demo   install, then run daily_revenue_job on the embedded sandbox over the last 7 days"
	@echo "make test   lint, check the definitions, and run the test suite on 2 cores"
	@echo "make dev    the Dagster UI on http://127.0.0.1:3000 with the sandbox behind it"
	@echo "make bench  the benchmarks in bench/ (slow; run by hand)"

install:
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -n "$(PYTHON)" || { echo "Python 3.13 not found: install it (e.g. 'pyenv install 3.13') and retry." >&2; exit 1; }
	@$(UV) sync --frozen --python "$(PYTHON)" --quiet
	@mkdir -p "$(DAGSTER_HOME)" && ln -sf ../dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"

demo: install
	$(RUN) python -m revenue_pipelines.demo

# A worker per core, at most 2 (the tests start servers and emulators: more would contend for memory), each
# taking whole files, so a module's fixtures (one BigQuery emulator per module) start once; the slowest listed.
test: install lint
	$(RUN) dg check defs
	$(RUN) pytest --numprocesses auto --maxprocesses 2 --dist loadfile --durations 15

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

# The UI with the sandbox behind it, and the webhook receiver beside it: the sandbox edits a record
# now and then and sends its webhook, crm_change_sensor turns it into a run.
dev: install
	$(RUN) python -m revenue_pipelines.sandbox run --webhooks-to http://127.0.0.1:8780 --live-changes 60 -- \
		sh -c 'python -m revenue_pipelines.receiver & exec dg dev --host 127.0.0.1 --port 3000'

sandbox: install
	$(RUN) python -m revenue_pipelines.sandbox serve

bench: install
	$(RUN) python -m bench.ingest_hubspot
	$(RUN) python -m bench.ingest_salesforce
	$(RUN) python -m bench.bigquery_read
	$(RUN) python -m bench.transform_scale
	$(RUN) python -m bench.ga4_generate
	$(RUN) python -m bench.receiver
	$(RUN) python -m bench.fail_fast
	$(RUN) python -m bench.routes
