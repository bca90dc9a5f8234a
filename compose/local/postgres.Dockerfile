# Stand-in for postgres:16-bookworm (no registry here, and PostgreSQL 16 is not in bookworm): Debian's
# PostgreSQL 15 server behind an entrypoint that keeps the official image's contract as compose uses it
# (POSTGRES_USER/POSTGRES_PASSWORD, data in /var/lib/postgresql/data, /docker-entrypoint-initdb.d/*.sql run
# once on an empty data folder, `postgres -c …` as the command, pg_isready for the health check).
FROM debian:bookworm-slim
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get -q update \
    && apt-get -q install -y --no-install-recommends postgresql-common \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get -q install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d \
    && chown postgres:postgres /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
