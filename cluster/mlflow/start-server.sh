#!/usr/bin/env bash
# MLflow tracking server for depmicro studies: SQL backend (PostgreSQL or MySQL; SQLite for a single
# machine) and an artifact root (S3, GCS, Azure Blob or a local/NFS directory) that the server
# proxies (--serve-artifacts), so study drivers need credentials for neither the database nor the bucket.
#
#   MLFLOW_BACKEND_URI=postgresql://mlflow:PASSWORD@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS=s3://my-bucket/depmicro-artifacts \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_ALLOWED_HOSTS=mlflow.internal:5000 \
#   cluster/mlflow/start-server.sh
#
# Defaults (a local trial run): sqlite:///$PWD/mlflow-server.db and ./mlflow-artifacts, port 5000,
# listening on 127.0.0.1 only. The server has no authentication of its own: anyone who reaches the
# port can read, change and delete every run. For a shared server either
#   - start it with MLflow's basic auth: MLFLOW_AUTH=basic-auth (adds --app-name basic-auth; needs
#     `pip install "mlflow[auth]"`; set MLFLOW_AUTH_ADMIN_PASSWORD before the first start), or
#   - keep 127.0.0.1 and put an authenticating reverse proxy (nginx/oauth2-proxy, TLS) in front;
# and only then set MLFLOW_HOST=0.0.0.0 (or the internal interface).
set -euo pipefail
BACKEND="${MLFLOW_BACKEND_URI:-sqlite:///$PWD/mlflow-server.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-$PWD/mlflow-artifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
AUTH="${MLFLOW_AUTH:-}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-4}"
ALLOWED="${MLFLOW_ALLOWED_HOSTS:-localhost:$PORT,127.0.0.1:$PORT,$(hostname):$PORT}"

APP=()
case "$AUTH" in
  "") ;;
  basic-auth) APP=(--app-name basic-auth)
              python -c "import flask_wtf" 2>/dev/null || { echo "pip install 'mlflow[auth]' first" >&2; exit 2; } ;;
  *) echo "MLFLOW_AUTH must be empty or basic-auth, not $AUTH" >&2; exit 2 ;;
esac
if [ "$HOST" != "127.0.0.1" ] && [ "$HOST" != "localhost" ] && [ -z "$AUTH" ]; then
  echo "warning: serving on $HOST without authentication; set MLFLOW_AUTH=basic-auth or use a proxy" >&2
fi

case "$BACKEND" in
  # the driver SQLAlchemy picks for the URI (plain postgresql:// is psycopg 3 from SQLAlchemy 2.1 on)
  postgresql*) python -c 'import sys, sqlalchemy; sqlalchemy.create_engine(sys.argv[1])' "$BACKEND" 2>/dev/null \
      || { echo "no driver for ${BACKEND%%://*}: pip install 'depmicro[cluster]' (psycopg) first" >&2; exit 2; } ;;
  mysql*) python -c "import pymysql" 2>/dev/null || { echo "pip install pymysql first" >&2; exit 2; } ;;
esac
case "$ARTIFACTS" in
  s3://*) python -c "import boto3" 2>/dev/null || { echo "pip install boto3 first" >&2; exit 2; } ;;
  gs://*) python -c "import google.cloud.storage" 2>/dev/null || { echo "pip install google-cloud-storage first" >&2; exit 2; } ;;
  *://*) ;;
  *) mkdir -p "$ARTIFACTS" ;;
esac

# create or migrate the schema before serving (idempotent)
mlflow db upgrade "$BACKEND"
exec mlflow server \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --serve-artifacts \
  --host "$HOST" --port "$PORT" "${APP[@]}" \
  --allowed-hosts "$ALLOWED" \
  --workers "$WORKERS"
