"""What a Celery worker does besides its tasks: load the model once per pool process, and run a small
maintenance thread in its main process: a heartbeat (so the system knows it is alive and whose claims are
dead) and the reconciler's sweep (matching.reconcile), so that work stranded by a dead worker is redone
without anybody typing a command. Connected to Celery's signals when Django loads the app (apps.py)."""
import logging
import threading

from celery.signals import worker_process_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from matching import health, reconcile, services
from matching.models import WorkerHeartbeat

log = logging.getLogger(__name__)


@worker_process_init.connect
def load_model_once(**_):
    """Load the active model when a worker process that takes the ML tasks starts, not on its first task. A
    worker on other queues only (no MVMATCH_ML_QUEUE) never runs the model: it does not hold one."""
    from workers.celery import app

    consumed = app.amqp.queues.consume_from or {}
    if settings.MVMATCH_ML_QUEUE not in {queue.name for queue in consumed.values()}:
        return
    try:
        services.get_bundle(services.active_model_version())
    except services.NoActiveModel:
        pass  # tasks will say so on the record they fail


class Maintenance(threading.Thread):
    """Heartbeat every MVMATCH_HEARTBEAT_SECONDS; reconcile once at start and sweep every
    MVMATCH_RECONCILE_SECONDS (0: never, e.g. where `manage.py reconcile` runs on a schedule)."""

    def __init__(self, hostname: str, queues: str):
        super().__init__(name="mvmatch-maintenance", daemon=True)
        self.hostname, self.queues = hostname, queues
        self.stopped = threading.Event()

    def run(self) -> None:
        worker, started = health.worker_id(), timezone.now()
        # An earlier instance of this node is not running any more: its claims are orphaned now.
        WorkerHeartbeat.objects.filter(hostname=self.hostname).exclude(worker=worker).delete()
        health.beat(worker, self.hostname, self.queues, started)
        interval, every = settings.MVMATCH_HEARTBEAT_SECONDS, settings.MVMATCH_RECONCILE_SECONDS
        if every:
            self._safely(lambda: self._log(reconcile.reconcile()))
        since_sweep = 0.0
        while not self.stopped.wait(interval):
            self._safely(lambda: health.beat(worker, self.hostname, self.queues, started))
            since_sweep += interval
            if every and since_sweep >= every:
                since_sweep = 0.0
                self._safely(lambda: self._log(reconcile.sweep()))
            close_old_connections()
        WorkerHeartbeat.objects.filter(worker=worker).delete()

    @staticmethod
    def _safely(step) -> None:
        try:
            step()
        except Exception:  # the database or index may be away for a while; try again next round
            log.exception("worker maintenance step failed")

    @staticmethod
    def _log(report) -> None:
        for line in report.details:
            log.warning("reconcile: %s", line)


_maintenance: Maintenance | None = None


@worker_ready.connect
def start_maintenance(sender=None, **_):
    global _maintenance
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    _maintenance = Maintenance(sender.hostname, queues)
    _maintenance.start()


@worker_shutdown.connect
def stop_maintenance(**_):
    if _maintenance is not None:
        _maintenance.stopped.set()
        _maintenance.join(timeout=10)
