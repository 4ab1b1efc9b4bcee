"""Celery tasks: thin wrappers over matching.services that add retries and failure bookkeeping."""
import logging

from celery import shared_task
from django.db import OperationalError
from pymilvus.exceptions import MilvusException

from catalog.models import IndexState, Product
from matching import services
from matching.models import MicroVideo

log = logging.getLogger(__name__)

# Faults of the infrastructure, not of the input: try again later.
TRANSIENT = (OperationalError, MilvusException, ConnectionError, TimeoutError)


def _run(task, model, pk: int, ingest) -> str:
    try:
        return ingest(pk)
    except model.DoesNotExist:
        log.warning("%s %s no longer exists; nothing to do", model.__name__, pk)
        return "missing"
    except TRANSIENT as exc:
        if task.request.retries < task.max_retries:
            raise task.retry(exc=exc, countdown=min(2 ** task.request.retries, 30))
        reason = f"gave up after {task.max_retries} retries: {exc}"
    except services.NoActiveModel as exc:
        reason = str(exc)
    except Exception as exc:  # a bug must not leave the record "processing" forever
        log.exception("ingesting %s %s failed", model.__name__, pk)
        reason = f"internal error: {type(exc).__name__}: {exc}"
    model.objects.filter(pk=pk).update(status=IndexState.FAILED, error=reason)
    return IndexState.FAILED


@shared_task(bind=True, max_retries=5)
def ingest_video(self, video_id: int) -> str:
    return _run(self, MicroVideo, video_id, services.ingest_video)


@shared_task(bind=True, max_retries=5)
def ingest_product(self, product_id: int) -> str:
    return _run(self, Product, product_id, services.ingest_product)
