# Thin wrappers; the logic lives in the crates and in .ci/.
CARGO ?= cargo
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/integrations_hub

.PHONY: run test lint fmt migrate postgres build

## Build, create and migrate the local database, and serve the API on :8000 (auth disabled).
run: postgres build
	IH_DATABASE_URL=$(DATABASE_URL) ./target/debug/ih-migrate up
	IH_DATABASE_URL=$(DATABASE_URL) IH_AUTH_DISABLED=true IH_LOG_FORMAT=pretty \
	IH_ALLOWED_DESTINATION_CIDRS=127.0.0.0/8 \
	./target/debug/ih-api

## The whole test suite, against the local Postgres.
test: postgres
	$(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

migrate: postgres build
	IH_DATABASE_URL=$(DATABASE_URL) ./target/debug/ih-migrate up

build:
	$(CARGO) build --workspace --bins

postgres:
	@.ci/ensure-postgres
