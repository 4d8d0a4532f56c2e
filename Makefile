# Thin wrappers; the logic lives in the crates and in .ci/.
SHELL := /bin/bash
CARGO ?= cargo
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/integrations_hub
# Local development only: no tokens, loopback receivers allowed, readable logs.
DEV_ENV = IH_AUTH_DISABLED=true IH_LOG_FORMAT=pretty IH_ALLOWED_DESTINATION_CIDRS=127.0.0.0/8
RUN_ENV = IH_DATABASE_URL=$(DATABASE_URL) $(DEV_ENV) IH_WORKER_METRICS_ADDR=127.0.0.1:9091

.PHONY: run run-pg test fuzz-api browser prometheus console-screenshots lint fmt migrate postgres build docker k8s-validate bench

## Build, then run `ih`: the API on :8000 and a worker in one process, on the SQLite file
## data/integrations-hub.db (created with its schema at first start; auth disabled). No
## database server needed. Ctrl-C stops it.
run: build
	$(DEV_ENV) ./target/debug/ih

## The scale-out pair on PostgreSQL: build, create and migrate the local database, then run
## one ih-worker beside ih-api on :8000 (auth disabled). Ctrl-C stops both.
run-pg: postgres build
	IH_DATABASE_URL=$(DATABASE_URL) ./target/debug/ih-migrate up
	$(RUN_ENV) ./target/debug/ih-worker & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT; \
	$(RUN_ENV) ./target/debug/ih-api

## The whole test suite, against the local Postgres and on SQLite files. The binaries are built
## first: tests run ih, ih-api, ih-worker and ih-migrate as real processes.
test: postgres browser prometheus
	$(CARGO) build --workspace --bins
	$(CARGO) nextest run --workspace --no-fail-fast

## Fuzz the live API against its OpenAPI document with schemathesis (after `make test`).
fuzz-api: postgres
	$(CARGO) build --workspace --bins
	.ci/schemathesis

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	.ci/validate-deploy

## Validate k8s/ and docker-compose.yml against their schemas (tools from PyPI, cached).
k8s-validate:
	.ci/validate-deploy

## Release build, then the standard benchmark suite on a throw-away stock PostgreSQL cluster
## (bench/cluster) with fresh databases; rewrites bench/README.md.
bench:
	$(CARGO) build --release --bins
	url=$$(bench/cluster start); \
	trap 'bench/cluster stop' EXIT; \
	./target/release/ih-bench suite --database-url "$$url"

## Build the container image (needs a Docker engine).
docker:
	docker build -t integrations-hub:local .

fmt:
	$(CARGO) fmt --all

migrate: postgres build
	IH_DATABASE_URL=$(DATABASE_URL) ./target/debug/ih-migrate up

build:
	$(CARGO) build --workspace --bins

postgres:
	@.ci/ensure-postgres

## Headless Chromium and chromedriver for the console's end-to-end test (Debian packages).
browser:
	@.ci/ensure-browser

## Debian's prometheus and promtool, for the alert rules' and the dashboard's tests.
prometheus:
	@.ci/ensure-prometheus

## Re-take the console screenshots in docs/ (runs the console's end-to-end test).
console-screenshots: postgres browser
	$(CARGO) build --workspace --bins
	IH_CONSOLE_SCREENSHOTS=$(CURDIR)/docs $(CARGO) nextest run -p worker -E 'test(/^console::/)'
