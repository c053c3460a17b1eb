# syntax=docker/dockerfile:1
#
# PostgreSQL 15 with fetch_etl and pg_cron installed.
#
# Every build step is a script that CI runs on each change (scripts/setup
# --build-only, scripts/package); this file only calls them. Note: our
# development machines have no Docker engine, so this image has not been built
# there; the scripts it calls are what CI tests.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Toolchain layer: Debian build packages, cargo-pgrx 0.18.1, `cargo pgrx init`.
COPY scripts/ scripts/
RUN scripts/setup --build-only
# Extension layer.
COPY Cargo.toml Cargo.lock fetch_etl.control ./
COPY crates/ crates/
COPY src/ src/
COPY sql/ sql/
RUN scripts/package --out-dir /out

FROM postgres:15-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15-cron ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Only the extension files: fetch_etl.so, fetch_etl.control, fetch_etl--*.sql.
COPY --from=builder /out/usr/ /usr/
COPY docker/initdb/ /docker-entrypoint-initdb.d/
# fetch_etl is preloaded so its superuser-only settings are protected in every session.
# It sends signed requests to AWS SQS only (fetch_etl.allowed_endpoints = 'aws');
# docker-compose.yml adds its emulator.
CMD ["postgres", \
     "-c", "shared_preload_libraries=pg_cron,fetch_etl", \
     "-c", "cron.database_name=postgres", \
     "-c", "cron.use_background_workers=on", \
     "-c", "max_worker_processes=16", \
     "-c", "fetch_etl.allowed_endpoints=aws"]
