"""The Celery app. Broker and result backend come from Django settings (CELERY_* names).

Embedded default: a filesystem broker (no server). Scale-out: Redis. ML tasks go to their own
queue (settings.MVMATCH_ML_QUEUE) so GPU workers can consume them alone.
"""
import os

from celery import Celery
from celery.signals import worker_process_init

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
app.autodiscover_tasks(["workers"])


@worker_process_init.connect
def load_model_once(**_):
    """Load the active model when a worker process starts, not on its first task."""
    import django

    django.setup()
    from matching import services

    try:
        services.get_bundle(services.active_model_version())
    except services.NoActiveModel:
        pass  # tasks will say so on the record they fail
