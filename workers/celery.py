"""The Celery app. Broker and result backend come from Django settings (CELERY_* names).

Embedded default: a filesystem broker (no server). Scale-out: Redis. ML tasks go to their own
queue (settings.MVMATCH_ML_QUEUE) so GPU workers can consume them alone. Tasks live with their
Django app (matching/tasks.py, autodiscovered); what a worker runs besides them is matching/worker.py.
"""
import os

from celery import Celery
from celery.signals import celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mvmatch.settings")

app = Celery("mvmatch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,  # a task whose worker dies is delivered again; tasks are idempotent
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
)
app.autodiscover_tasks()


@celeryd_init.connect
def name_this_worker(sender=None, **_):
    """One name per worker instance (node and main process), inherited by the pool's processes
    (matching.health.worker_id)."""
    os.environ["MVMATCH_WORKER_ID"] = f"{sender}/{os.getpid()}"
