"""gunicorn settings of the web process: ``.venv/bin/gunicorn -c deploy/gunicorn.conf.py mvmatch.wsgi``.

The app and the active model bundle load once in the master, before the workers fork, so every
worker starts with them in (shared, copy-on-write) memory and its first lookup is fast. The master
runs no torch kernels (one thread while loading), so forked workers may use torch's thread pool.
Connections (database, Milvus) are opened by each worker after the fork, never shared.

Environment: MVMATCH_BIND (127.0.0.1:8000), MVMATCH_WEB_WORKERS (2), MVMATCH_WEB_THREADS (4),
MVMATCH_WEB_TIMEOUT seconds (60), MVMATCH_WEB_MAX_REQUESTS (0 = never recycle a worker),
MVMATCH_TORCH_THREADS per worker (1), MVMATCH_ACCESS_LOG (a path or "-"; default off),
MVMATCH_WEB_PIDFILE (the master's pid, for deploy/loadtest.py --pid-file).
"""
import logging
import os

log = logging.getLogger("mvmatch.gunicorn")

bind = os.environ.get("MVMATCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MVMATCH_WEB_WORKERS", "2"))
threads = int(os.environ.get("MVMATCH_WEB_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("MVMATCH_WEB_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("MVMATCH_WEB_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
preload_app = True
accesslog = os.environ.get("MVMATCH_ACCESS_LOG") or None
errorlog = "-"
pidfile = os.environ.get("MVMATCH_WEB_PIDFILE") or None
wsgi_app = "mvmatch.wsgi:application"
control_socket_disable = True  # one fixed path per user: two instances on a machine would clash


def when_ready(server):
    """In the master, after the app is imported and before any worker forks: load the active model."""
    import torch

    torch.set_num_threads(1)
    try:
        from django.urls import get_resolver

        from matching import services

        get_resolver().url_patterns  # noqa: B018 - builds the URL resolver once, before the fork
        version = services.active_model_version()
        services.get_bundle(version)
        server.log.info("model %s loaded before forking workers", version.name)
    except Exception as exc:  # no model yet (a fresh install): workers load it on first use
        server.log.warning("no model loaded before forking workers: %s", exc)
    finally:
        from django.db import connections

        connections.close_all()  # a connection opened here must not be shared by the forked workers


def post_worker_init(worker):
    """In each worker, before its first request: torch threads, database and Milvus connections."""
    import torch
    from django.conf import settings

    torch.set_num_threads(settings.MVMATCH_TORCH_THREADS)
    try:
        from matching import services

        version = services.active_model_version()
        services.product_index(version).ensure()
        services.video_index(version).ensure()
    except Exception as exc:
        worker.log.warning("worker %s: index not warmed: %s", worker.pid, exc)
