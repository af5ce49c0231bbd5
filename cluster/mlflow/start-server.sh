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
# Defaults (a local trial run): sqlite:///$PWD/mlflow-server.db and ./mlflow-artifacts, 127.0.0.1:5000.
set -euo pipefail
BACKEND="${MLFLOW_BACKEND_URI:-sqlite:///$PWD/mlflow-server.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-$PWD/mlflow-artifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"   # loopback unless asked: MLFLOW_HOST=0.0.0.0 serves the cluster
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-4}"
ALLOWED="${MLFLOW_ALLOWED_HOSTS:-localhost:$PORT,127.0.0.1:$PORT,$(hostname):$PORT}"

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
  --host "$HOST" --port "$PORT" \
  --allowed-hosts "$ALLOWED" \
  --workers "$WORKERS"
