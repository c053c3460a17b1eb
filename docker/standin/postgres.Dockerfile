# A local stand-in for the official postgres:${PG_MAJOR}-bookworm image, for
# `scripts/test image` on machines that reach no image registry: Debian's
# PostgreSQL and pg_cron on a debootstrap'ed bookworm (BASE_IMAGE), laid out
# the way the official image is where fetch_etl's Dockerfile depends on it:
# the postgres user, PGDATA, PATH with the server's binaries, the
# /docker-entrypoint-initdb.d directory, an entrypoint that initialises the
# data directory (POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB), runs the
# init scripts against a temporary server started with the command's options
# and no TCP, then runs the command; SIGINT to stop.
ARG BASE_IMAGE=localhost/fetch-etl-base:bookworm
FROM ${BASE_IMAGE}
ARG PG_MAJOR=15
ENV PG_MAJOR=${PG_MAJOR} \
    PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
# As the official image: Debian's packages, without the cluster they would create.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         "postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-cron" ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/${PG_MAJOR}/postgresql.conf.sample \
    && mkdir -p /docker-entrypoint-initdb.d "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 1777 "$PGDATA" && chmod 3777 /var/run/postgresql
COPY docker/standin/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
