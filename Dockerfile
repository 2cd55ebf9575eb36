# syntax=docker/dockerfile:1
# attendance-relay: release build in a Rust image, run from distroless as a
# numeric non-root user with only the binary (distroless/cc carries glibc,
# libgcc and the CA certificates).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Dependency layer: the manifest and lock with stub sources, so a change in
# src/ rebuilds only the crate itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src samples \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo '[]' > samples/zoom-webhooks.json \
 && cargo build --release --locked \
 && rm -rf src samples

# The crate: the same command and features CI builds with (no extra features).
COPY src ./src
COPY samples ./samples
# COPY keeps the sources' older mtimes; touch them so cargo rebuilds the crate
# over the stub.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/attendance-relay /out/usr/local/bin/attendance-relay \
 && install -d -m 0750 /out/var/lib/attendance-relay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/attendance-relay /usr/local/bin/attendance-relay
COPY --from=build --chown=65532:65532 /out/var/lib/attendance-relay /var/lib/attendance-relay
# The embedded SQLite store lives on this volume (mount a persistent one).
ENV RELAY_DATABASE_URL=sqlite:///var/lib/attendance-relay/relay.db \
    RELAY_LISTEN_ADDR=0.0.0.0:8080 \
    RELAY_ADMIN_ADDR=0.0.0.0:9090
VOLUME ["/var/lib/attendance-relay"]
WORKDIR /var/lib/attendance-relay
# 8080: webhooks, /healthz, /readyz. 9090: /metrics and /admin (keep it internal).
EXPOSE 8080 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/attendance-relay", "serve"]
