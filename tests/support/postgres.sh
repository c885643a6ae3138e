#!/usr/bin/env bash
# A PostgreSQL server on this machine's loopback, for the tests of a search shared by workers
# (tests/test_search.py): Debian's postgresql, run as the postgres user (it refuses root).
#   bash tests/support/postgres.sh install   apt-get the package (.ci/run does it; needs root)
#   bash tests/support/postgres.sh start     initdb once, start on 127.0.0.1:$PORT; prints the URL
#   bash tests/support/postgres.sh stop
# Each prints why and exits 1 when it cannot (no root, no package, a server that does not start).
# Trust authentication on loopback only: the tests' passwords are accepted and never checked.
set -uo pipefail
PORT=${EXPERIMENTS_PG_PORT:-55432}
DATA=${EXPERIMENTS_PG_DATA:-/var/tmp/experiments-postgres}

fail() { echo "postgres: $*"; exit 1; }

bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] || return 1
  echo "$dir"
}

install() {
  bin >/dev/null && return 0
  [ "$(id -u)" = 0 ] || fail "not root: cannot apt-get install postgresql"
  command -v apt-get >/dev/null || fail "no apt-get on this machine"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql; } >/tmp/postgres-apt.log 2>&1 || fail "apt-get install failed (/tmp/postgres-apt.log)"
}

start() {
  local pg
  pg=$(bin) || fail "the PostgreSQL server is not installed (bash tests/support/postgres.sh install)"
  [ "$(id -u)" = 0 ] || fail "not root: cannot run the server as the postgres user"
  id postgres >/dev/null 2>&1 || fail "no postgres user (Debian's postgresql package makes it)"
  exec 9>/tmp/experiments-postgres.lock && flock 9  # (two pytest workers start it at once)
  if ! "$pg/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [ ! -s "$DATA/PG_VERSION" ]; then
      mkdir -p "$DATA" && chown postgres: "$DATA" && chmod 700 "$DATA"
      runuser -u postgres -- "$pg/initdb" -D "$DATA" -A trust -U postgres >"$DATA.initdb.log" 2>&1 \
        || fail "initdb failed ($DATA.initdb.log)"
    fi
    runuser -u postgres -- "$pg/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
      -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >/dev/null 9>&- \
      || fail "the server did not start ($DATA/server.log)"
  fi
  echo "postgresql://postgres@127.0.0.1:$PORT/postgres"
}

stop() {
  local pg
  pg=$(bin) || return 0
  runuser -u postgres -- "$pg/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1
  return 0
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) fail "usage: postgres.sh install|start|stop" ;;
esac
