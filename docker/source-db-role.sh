#!/usr/bin/env bash
# Runs first on an empty source-db volume (/docker-entrypoint-initdb.d): the replication role
# that Debezium logs in as. Its password comes from the environment, never from a file in git.
set -eo pipefail
: "${SOURCE_CDC_PASSWORD:?set SOURCE_CDC_PASSWORD for the source-db service}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=cdc_password="$SOURCE_CDC_PASSWORD" <<'SQL'
CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD :'cdc_password';
SQL
