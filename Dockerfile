# syntax=docker/dockerfile:1
#
# PostgreSQL with fetch_etl and pg_cron installed, for PG_MAJOR 15 (the
# default), 17 or 18:
#
#   docker build -t fetch_etl:pg17 --build-arg PG_MAJOR=17 .
#
# Every build step is a script that CI runs on each change (scripts/setup
# --build-only, scripts/pg-build for 17 and 18, scripts/package --deb); this
# file only calls them, and the image installs the very .deb CI checks.
#
# CI builds and runs the runtime stage with podman (`scripts/test image`),
# with local stand-ins for the base images (no registry is reachable there)
# and the .deb scripts/package made: the three arguments below. The builder
# stage is not built there (it needs the rust image's toolchain).
ARG PG_MAJOR=15
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=postgres:${PG_MAJOR}-bookworm
# The image the .deb comes from: the builder stage, or one holding
# /out/postgresql-${PG_MAJOR}-fetch-etl_*.deb already.
ARG DEB_IMAGE=builder

FROM ${BUILDER_IMAGE} AS builder
ARG PG_MAJOR
WORKDIR /src
# Toolchain layer: Debian build packages, cargo-pgrx 0.18.1, the PostgreSQL
# headers (Debian's for 15; 17 and 18 built from Debian's source packages),
# `cargo pgrx init`.
COPY scripts/ scripts/
RUN scripts/setup --build-only --pg "${PG_MAJOR}"
# Extension layer.
COPY Cargo.toml Cargo.lock fetch_etl.control README.md ./
COPY crates/ crates/
COPY src/ src/
COPY sql/ sql/
RUN scripts/package --pg "${PG_MAJOR}" --deb --out-dir /out

FROM ${DEB_IMAGE} AS debs

FROM ${RUNTIME_IMAGE} AS runtime
ARG PG_MAJOR
# The official image carries apt.postgresql.org, which has postgresql-N and
# postgresql-N-cron for every supported major.
COPY --from=debs /out/postgresql-${PG_MAJOR}-fetch-etl_*.deb /tmp/
RUN apt-get update \
    && apt-get install -y --no-install-recommends /tmp/postgresql-${PG_MAJOR}-fetch-etl_*.deb \
         "postgresql-${PG_MAJOR}-cron" ca-certificates \
    && rm -rf /var/lib/apt/lists/* /tmp/*.deb
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
