# Compose's PostgreSQL (core's catalog, hosting's store, Dagster's runs and events), built with the network off
# from a local base: Debian bookworm minbase with postgresql-15, made by
#   EXTRA_PACKAGES=postgresql-15 scripts/make_base_image.sh constellation/postgres-base:15
# Data lives in the volume at /var/lib/postgresql/data; docker/postgres-entrypoint.sh makes the cluster (and
# the `constellation` and `dagster` databases) on first start only.
ARG BASE_IMAGE=constellation/postgres-base:15
FROM ${BASE_IMAGE}
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
