#!/usr/bin/env bash
# The demo, from a fresh machine: set-up, ontology, a trained model, a demo catalog and micro-videos
# ingested by a real Celery worker into Milvus, suggestions computed, then the admin to review them.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
bash deploy/setup.sh
PY=.venv/bin/python
export MVMATCH_VAR_DIR=${MVMATCH_VAR_DIR:-$PWD/var}
# Production settings need a secret key: the demo keeps one of its own in var/ (made once, private).
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
  mkdir -p "$MVMATCH_VAR_DIR"
  [ -s "$MVMATCH_VAR_DIR/secret_key" ] || (umask 077; $PY -c "import secrets; print(secrets.token_urlsafe(50))" > "$MVMATCH_VAR_DIR/secret_key")
  export DJANGO_SECRET_KEY=$(cat "$MVMATCH_VAR_DIR/secret_key")
fi
mkdir -p "$MVMATCH_VAR_DIR/log"
PORT=${PORT:-8000}
MILVUS_PORT=${MILVUS_PORT:-19530}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Web and worker both use the index, and a milvus-lite file opens in one process only: run one server.
if [ -z "${MILVUS_URI:-}" ]; then
  .venv/bin/milvus-lite server --data-dir "$MVMATCH_VAR_DIR/milvus" --host 127.0.0.1 --port "$MILVUS_PORT" \
    > "$MVMATCH_VAR_DIR/log/milvus.log" 2>&1 &
  pids+=($!)
  export MILVUS_URI=http://127.0.0.1:$MILVUS_PORT
  for _ in $(seq 120); do
    $PY -c "from pymilvus import MilvusClient; MilvusClient(uri='$MILVUS_URI', timeout=2)" 2>/dev/null && break
    sleep 0.5
  done
fi

$PY manage.py migrate --noinput -v0
$PY manage.py load_ontology
$PY manage.py build_model --name demo-v1   # trains once; later runs reuse the registered model

$PY -m celery -A workers worker -Q ml,celery --concurrency 1 --loglevel INFO \
  > "$MVMATCH_VAR_DIR/log/worker.log" 2>&1 &
pids+=($!)

$PY manage.py load_demo
echo "[demo] set-up finished in $(( $(date +%s) - START )) s"
echo "[demo] admin: http://127.0.0.1:$PORT/admin/   (matches: http://127.0.0.1:$PORT/admin/matching/match/)"
echo "[demo] API:   http://127.0.0.1:$PORT/api/     schema: http://127.0.0.1:$PORT/api/schema/"
echo "[demo] pages: sign in at http://127.0.0.1:$PORT/accounts/login/ (logins above), then"
echo "[demo]   publisher http://127.0.0.1:$PORT/publisher/  merchant http://127.0.0.1:$PORT/merchant/  reviewer http://127.0.0.1:$PORT/review/"
echo "[demo] worker log: $MVMATCH_VAR_DIR/log/worker.log"
$PY manage.py collectstatic --noinput -v0
# gunicorn (deploy/gunicorn.conf.py): the model loads before the web workers fork; loopback only.
MVMATCH_BIND=127.0.0.1:$PORT MVMATCH_WEB_PIDFILE=$MVMATCH_VAR_DIR/web.pid .venv/bin/gunicorn -c deploy/gunicorn.conf.py
