# Sourced by .ci/run: a throwaway PostgreSQL on loopback for tests/studies/test_cluster.py, which
# starts an MLflow tracking server (cluster/mlflow/start-server.sh) with it as the backend store.
#
#   pg_start  install PostgreSQL from Debian's packages if it is absent (root only), initdb a cluster
#             in a fresh temporary directory, serve it on 127.0.0.1 at a free port, create a user that
#             may create databases, export DEPMICRO_TEST_PG_DSN. On any failure it exports
#             DEPMICRO_TEST_PG_UNAVAILABLE (the reason, which the test skips with) and returns 0:
#             CI runs everything else.
#   pg_stop   stop that cluster and remove its directory (.ci/run calls it from its EXIT trap).
#
# Nothing outside the temporary directory is configured or started: no system cluster, no service.

PG_DIR=""
PG_BIN=""

_pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# run a PostgreSQL program as the cluster's owner (initdb and postgres refuse to run as root)
_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_install() {
  PG_BIN=$(_pg_bindir)
  if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ]; then
    echo "postgres: $("$PG_BIN/postgres" --version) already installed, apt skipped"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then PG_FAIL="PostgreSQL is not installed and installing it needs root"; return 1; fi
  local t0=$SECONDS
  if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >/tmp/depmicro-ci-apt.log 2>&1 \
     || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >>/tmp/depmicro-ci-apt.log 2>&1; then
    PG_FAIL="apt-get install postgresql failed after $((SECONDS - t0)) s: $(tail -n 1 /tmp/depmicro-ci-apt.log)"
    return 1
  fi
  echo "postgres: apt-get update + install postgresql took $((SECONDS - t0)) s"
  PG_BIN=$(_pg_bindir)
  [ -x "$PG_BIN/initdb" ] || { PG_FAIL="apt installed postgresql but no initdb under /usr/lib/postgresql"; return 1; }
}

_pg_up() {
  _pg_install || return 1
  local t0=$SECONDS port password
  PG_DIR=$(mktemp -d /tmp/depmicro-pg-XXXXXX) || { PG_FAIL="mktemp failed"; return 1; }
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  # local socket connections (inside $PG_DIR, mode 0700) trust the owner; TCP needs the password
  _pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      >"$PG_DIR/initdb.log" 2>&1 || { PG_FAIL="initdb failed: $(tail -n 1 "$PG_DIR/initdb.log")"; return 1; }
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR" start >/dev/null \
      || { PG_FAIL="PostgreSQL did not start: $(tail -n 1 "$PG_DIR/server.log")"; return 1; }
  _pg_as_owner "$PG_BIN/psql" -h "$PG_DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
      -c "CREATE ROLE depmicro LOGIN CREATEDB PASSWORD '$password'" -c "CREATE DATABASE depmicro OWNER depmicro" \
      >"$PG_DIR/setup.log" 2>&1 || { PG_FAIL="creating the user failed: $(tail -n 1 "$PG_DIR/setup.log")"; return 1; }
  export DEPMICRO_TEST_PG_DSN="postgresql://depmicro:$password@127.0.0.1:$port/depmicro"
  echo "postgres: throwaway cluster on 127.0.0.1:$port up in $((SECONDS - t0)) s"
}

pg_start() {
  PG_FAIL=""
  unset DEPMICRO_TEST_PG_DSN DEPMICRO_TEST_PG_UNAVAILABLE
  if ! _pg_up; then
    export DEPMICRO_TEST_PG_UNAVAILABLE="${PG_FAIL:-PostgreSQL setup failed}"
    echo "postgres: unavailable ($DEPMICRO_TEST_PG_UNAVAILABLE); the MLflow server test will skip" >&2
  fi
  return 0
}

pg_stop() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  PG_DIR=""
}
