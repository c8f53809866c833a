# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image
# as an unprivileged user. Builds both binaries; the `loadtest` compose
# service runs navcast-load from the same image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src/bin benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs && touch loadtest/src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/bin/navcast-bench.rs \
 && for b in routing fanout; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked -p navcast -p navcast-load || true
COPY . .
RUN touch src/lib.rs src/main.rs loadtest/src/main.rs \
 && cargo build --release --locked -p navcast -p navcast-load \
 && install -m 0755 target/release/navcast target/release/navcast-load /usr/local/bin/

FROM debian:bookworm-slim
# Unpinned on purpose: the slim image should take Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --create-home navcast
COPY --from=build /usr/local/bin/navcast /usr/local/bin/navcast-load /usr/local/bin/
COPY config /app/config
WORKDIR /app
USER 10001
ENV NAVCAST_LISTEN=0.0.0.0:8080 NAVCAST_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/navcast"]
