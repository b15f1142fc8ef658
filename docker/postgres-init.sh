#!/bin/sh
# Runs once, on the first start of the postgres container (docker-entrypoint-initdb.d):
# creates the MLflow and ledger databases named by MLFLOW_DB and LEDGER_DB, owned by POSTGRES_USER.
set -e
for db in "${MLFLOW_DB:-mlflow}" "${LEDGER_DB:-poleng}"; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --set db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
