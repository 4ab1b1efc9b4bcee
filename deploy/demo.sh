#!/usr/bin/env bash
# The demo, from a fresh machine: set-up, ontology, a trained model, a demo catalog and micro-videos
# ingested by a real Celery worker into Milvus, suggestions computed, then the admin to review them.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
bash deploy/setup.sh
PY=.venv/bin/python
export MVMATCH_VAR_DIR=${MVMATCH_VAR_DIR:-$PWD/var}
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
echo "[demo] worker log: $MVMATCH_VAR_DIR/log/worker.log"
$PY manage.py runserver "0.0.0.0:$PORT" --noreload
