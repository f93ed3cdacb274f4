# kafka-assets: every target does its own set-up (virtualenv, install, jars, services).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MESSAGES ?= 20000
BENCH_MESSAGES ?= 1000000
# Where `make dev` serves the UI; the demo prints the same address.
export KAFKA_ASSETS_UI_HOST ?= 127.0.0.1
export KAFKA_ASSETS_UI_PORT ?= 3000

.PHONY: help install jars services-up services-down status demo dev check test test-unit bench lint clean

help:
	@echo "make demo           set up everything, run Kafka -> Spark -> PostgreSQL once (MESSAGES=$(MESSAGES))"
	@echo "make test           set up everything, run unit + integration tests against real services"
	@echo "make dev            Dagster UI + daemon (sensors on): http://$(KAFKA_ASSETS_UI_HOST):$(KAFKA_ASSETS_UI_PORT)"
	@echo "make check          dg check defs: every pipeline YAML under kafka_assets/defs/ loads"
	@echo "make bench          figures against their baselines (BENCH_MESSAGES=$(BENCH_MESSAGES)), README table"
	@echo "make services-up / services-down / status"

$(STAMP): pyproject.toml
	./scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

jars: install
	$(PY) -m kafka_assets.local jars

services-up: install
	$(PY) -m kafka_assets.local up

services-down:
	@if [ -x $(PY) ]; then $(PY) -m kafka_assets.local down; fi

status: install
	$(PY) -m kafka_assets.local status

demo: install
	$(PY) -m kafka_assets.demo --messages $(MESSAGES)

# The daemon's runs use a warm Spark: a Spark Connect server starts with the services, so a
# sensor's run starts no JVM of its own (KAFKA_ASSETS_SPARK=local: a Spark inside each run).
dev: export KAFKA_ASSETS_SPARK ?= connect
dev: services-up
	set -a && . ./.env && set +a && $(VENV)/bin/dagster dev -w workspace.yaml \
		-h $(KAFKA_ASSETS_UI_HOST) -p $(KAFKA_ASSETS_UI_PORT)

check: install
	cd $(CURDIR) && $(VENV)/bin/dg check defs --use-active-venv

# KAFKA_ASSETS_REQUIRE_SERVICES=1: a Kafka, Kafka Connect, Spark or PostgreSQL that cannot start
# fails the run.
test: install
	KAFKA_ASSETS_REQUIRE_SERVICES=1 $(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m "not integration"

# Its own services on free ports under .local/bench; results.json and plots land there too.
bench: install
	$(PY) -m kafka_assets.bench --messages $(BENCH_MESSAGES) --readme

lint: install
	$(VENV)/bin/ruff check kafka_assets kafka_assets_tests
	$(VENV)/bin/ruff format --check kafka_assets kafka_assets_tests

clean: services-down
	rm -rf .local $(VENV) jvm/target
