#!/usr/bin/env bash
# Run the whole test suite (sets up the machine first). Redis is started if nothing answers on its port.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
export REDIS_URL
if ! .venv/bin/python -c "import redis,sys; redis.Redis.from_url('$REDIS_URL', socket_timeout=2).ping()" 2>/dev/null; then
  if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  echo "[test] starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
exec .venv/bin/python -m pytest "$@"
