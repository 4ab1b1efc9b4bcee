"""Celery tasks: thin wrappers over matching.services that add retries, failure bookkeeping and a log line
per outcome. Autodiscovered by the Celery app (workers.celery)."""
import logging
import time

from celery import shared_task
from django.db import InterfaceError, OperationalError
from pymilvus.exceptions import MilvusException

from catalog.models import Product
from matching import health, services
from matching.indexing import IndexState
from matching.models import MicroVideo

log = logging.getLogger(__name__)

# Faults of the infrastructure, not of the input: try again later.
TRANSIENT = (OperationalError, InterfaceError, MilvusException, ConnectionError, TimeoutError)


def _run(task, model, pk: int, ingest) -> str:
    started = time.monotonic()
    token = task.request.id or f"local-{pk}-{started}"
    what = f"{model._meta.model_name} {pk}"
    try:
        outcome = ingest(pk, token=token, worker=health.worker_id())
    except TRANSIENT as exc:
        if task.request.retries < task.max_retries:
            countdown = min(2 ** task.request.retries, 30)
            log.warning("ingest %s: %s: %s; retry %d/%d in %d s", what, type(exc).__name__, exc,
                        task.request.retries + 1, task.max_retries, countdown)
            raise task.retry(exc=exc, countdown=countdown)
        reason = f"gave up after {task.max_retries} retries: {exc}"
        outcome = _fail(model, pk, token, reason)
    except services.NoActiveModel as exc:
        outcome = _fail(model, pk, token, str(exc))
    except Exception as exc:  # a bug must not leave the record "processing" forever
        log.exception("ingest %s: internal error", what)
        outcome = _fail(model, pk, token, f"internal error: {type(exc).__name__}: {exc}")
    status, reason = outcome
    log.info("ingest %s: %s in %.2f s%s", what, status, time.monotonic() - started, f": {reason}" if reason else "")
    return status


def _fail(model, pk: int, token: str, reason: str) -> services.Outcome:
    if services.fail(model, pk, token, reason):
        return services.Outcome(IndexState.FAILED, reason)
    if not model.objects.filter(pk=pk).exists():
        return services.Outcome(services.MISSING)
    return services.Outcome(services.BUSY, f"not marked failed, another task holds it: {reason}")


@shared_task(bind=True, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def ingest_video(self, video_id: int) -> str:
    return _run(self, MicroVideo, video_id, services.ingest_video)


@shared_task(bind=True, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def ingest_product(self, product_id: int) -> str:
    return _run(self, Product, product_id, services.ingest_product)

