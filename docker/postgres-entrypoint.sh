#!/bin/sh
# First start: a cluster owned by POSTGRES_USER (password auth over TCP) with the databases in
# POSTGRES_DATABASES. Later starts find PG_VERSION in the volume and only run the server. Arguments go to postgres.
set -eu
: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
  for db in ${POSTGRES_DATABASES:-}; do
    psql -v ON_ERROR_STOP=1 -q --username="$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$db\""
  done
  pg_ctl -w -m fast stop >/dev/null
fi
# Under compose the services connect from other containers of the stack's network (the server's own subnet):
# password auth from there too (initdb allows only loopback). Added once, also to a cluster made before.
grep -q '^host all all samenet ' "$PGDATA/pg_hba.conf" || echo 'host all all samenet scram-sha-256' >> "$PGDATA/pg_hba.conf"
exec postgres "$@"
