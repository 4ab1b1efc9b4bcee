"""Is the system able to do its work? Database, index, broker, live workers and the queue, for
`GET /api/health/`, the admin and uploads. Workers report themselves alive through WorkerHeartbeat."""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Min
from django.utils import timezone

from catalog.models import Product
from matching.indexing import IndexState
from matching.models import MicroVideo, WorkerHeartbeat
from matching.services import index_client
from workers.celery import app


def worker_id() -> str:
    """This worker instance's name: set by the Celery app in the worker's main process, inherited by its
    pool; elsewhere (eager runs, commands) the host and process."""
    return os.environ.get("MVMATCH_WORKER_ID") or f"{socket.gethostname()}/{os.getpid()}"


def beat(worker: str, hostname: str, queues: str, started_at) -> None:
    WorkerHeartbeat.objects.update_or_create(
        worker=worker, defaults={"hostname": hostname, "queues": queues, "started_at": started_at,
                                 "last_seen": timezone.now()})


def alive_workers():
    """Workers whose heartbeat is recent enough to count them as running."""
    since = timezone.now() - timedelta(seconds=settings.MVMATCH_WORKER_DEAD_AFTER_SECONDS)
    return WorkerHeartbeat.objects.filter(last_seen__gte=since)


def queue_state() -> dict:
    """How many items wait for a worker and since when."""
    depth, oldest = 0, None
    for model in (Product, MicroVideo):
        waiting = model.objects.filter(status__in=[IndexState.QUEUED, IndexState.PROCESSING])
        depth += waiting.filter(status=IndexState.QUEUED).count()
        first = waiting.aggregate(first=Min("queued_at"))["first"]
        oldest = first if oldest is None or (first is not None and first < oldest) else oldest
    age = None if oldest is None else round((timezone.now() - oldest).total_seconds(), 1)
    return {"depth": depth, "oldest_age_seconds": age}


def _check(probe) -> dict:
    started = time.monotonic()
    try:
        probe()
    except Exception as exc:  # any failure of a dependency is what this reports
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "ms": round(1000 * (time.monotonic() - started), 1)}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _index() -> None:
    index_client().list_collections()


def _broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def report() -> dict:
    """The health of every part; ``ok`` is False when a part does not answer or no worker runs."""
    parts = {"database": _check(_database), "index": _check(_index), "broker": _check(_broker)}
    workers = list(alive_workers().values("hostname", "queues", "last_seen")) if parts["database"]["ok"] else []
    queue = queue_state() if parts["database"]["ok"] else None
    ok = all(p["ok"] for p in parts.values()) and bool(workers)
    return {"ok": ok, **parts, "workers": {"alive": len(workers), "list": workers}, "queue": queue}
