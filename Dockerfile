# Builds ih-api, ih-worker, ih-migrate and ih (the embedded single-process mode) into one
# small runtime image.
#
#   docker build -t integrations-hub .
#   docker run --rm integrations-hub ih-api --help
#
# Stage 1 compiles the dependencies alone (from the manifests and lock file), so a change to
# the project's sources rebuilds only the project's crates.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config && rm -rf /var/lib/apt/lists/*

COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY shared/Cargo.toml shared/Cargo.toml
COPY migration/Cargo.toml migration/Cargo.toml
COPY migrate/Cargo.toml migrate/Cargo.toml
COPY hub/Cargo.toml hub/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
COPY testkit/Cargo.toml testkit/Cargo.toml
COPY store/Cargo.toml store/Cargo.toml
RUN for crate in api worker hub shared migration migrate bench testkit store; do \
      mkdir -p $crate/src && echo 'fn main() {}' > $crate/src/main.rs && touch $crate/src/lib.rs; \
    done \
 && cargo build --release --locked --bins \
 && rm -rf api/src worker/src hub/src shared/src migration/src migrate/src bench/src testkit/src store/src

COPY . .
# make cargo see the real sources as newer than the placeholder build
RUN find api worker hub shared migration migrate bench testkit store -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin ih-api --bin ih-worker --bin ih-migrate --bin ih

# Stage 2: no shell, no package manager; CA certificates for TLS to subscribers and Slack;
# runs as the distroless `nonroot` user (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/ih-api /build/target/release/ih-worker /build/target/release/ih-migrate /build/target/release/ih /usr/local/bin/
USER nonroot:nonroot
EXPOSE 8000 9091
ENV IH_LOG_FORMAT=json
ENTRYPOINT []
CMD ["ih-api"]
