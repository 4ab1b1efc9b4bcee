#!/usr/bin/env bash
# Set up a fresh machine for mvmatch: ffmpeg, a virtualenv with every dependency. Idempotent and quick
# when nothing changed. Used by deploy/demo.sh, deploy/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "[setup] installing ffmpeg"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; "$PYTHON" -m venv .venv; }

# torch/torchvision: the builds this machine's pip can take from local disk (see README, "Machines").
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac

stamp=.venv/.mvmatch-installed
want=$( (cat pyproject.toml deploy/setup.sh; echo "$TORCH") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
  .venv/bin/python -m pip install -q $TORCH 2>&1 | grep -v '^WARNING' || true
  .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING' || true
  .venv/bin/python -c "import torch, open_clip, pymilvus, celery, django, ffmpeg" 
  echo "$want" > "$stamp"
fi
