#!/usr/bin/env bash
# Run the whole test suite (sets up the machine first). The scale-out end-to-end tests need Redis and
# PostgreSQL: each is installed and started here if nothing answers on its port (REDIS_URL,
# MVMATCH_TEST_POSTGRES name other servers; then nothing is started and the tests use those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

apt_install() {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

listening() {  # host port
  .venv/bin/python -c "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()" \
    "$1" "$2" 2>/dev/null
}

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
export REDIS_URL
if ! .venv/bin/python -c "import redis,sys; redis.Redis.from_url('$REDIS_URL', socket_timeout=2).ping()" 2>/dev/null; then
  command -v redis-server >/dev/null || apt_install redis-server
  echo "[test] starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The page tests drive Debian's chromium through Playwright (its own browser download is not reachable).
MVMATCH_CHROMIUM=${MVMATCH_CHROMIUM:-/usr/bin/chromium}
export MVMATCH_CHROMIUM
[ -x "$MVMATCH_CHROMIUM" ] || apt_install chromium

if [ -z "${MVMATCH_TEST_POSTGRES:-}" ]; then
  MVMATCH_TEST_POSTGRES="postgres://postgres:mvmatch-test@127.0.0.1:5432/postgres"
  if ! listening 127.0.0.1 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_lsclusters -h "$version" main 2>/dev/null | grep -q . || $SUDO pg_createcluster "$version" main >/dev/null
    echo "[test] starting PostgreSQL $version"
    $SUDO pg_ctlcluster "$version" main start
    for _ in $(seq 100); do listening 127.0.0.1 5432 && break; sleep 0.1; done
    # The cluster we started: the tests log in over TCP as postgres with this password.
    if [ "$(id -u)" = 0 ]; then AS_POSTGRES="su postgres -c"; else AS_POSTGRES="sudo -u postgres sh -c"; fi
    $AS_POSTGRES "psql -q -c \"ALTER USER postgres PASSWORD 'mvmatch-test'\""
  fi
fi
export MVMATCH_TEST_POSTGRES
exec .venv/bin/python -m pytest "$@"
