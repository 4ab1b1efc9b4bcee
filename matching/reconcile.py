"""Keep the work flowing and the index in agreement with the database.

``sweep`` (run every few seconds by each worker, see workers.celery) requeues work that nobody will
finish: items ``processing`` under a worker that stopped beating or past their lease, and items
``queued`` so long that their message was probably lost. An item interrupted too often is marked failed
instead, so one input that kills workers cannot take them down forever.

``repair`` (`manage.py reconcile`, and once when a worker starts) compares every model version's
collections with the rows: vectors without a row, vectors of the wrong version or of a failed item are
deleted; indexed rows without their vector are queued again; pending matches of a failed item, or
made by another model version than either item's, are removed (reviewed ones are kept).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from catalog.models import Product
from matching import health, services
from matching.indexing import IndexState
from matching.models import Match, MicroVideo, ModelVersion

MODELS = (Product, MicroVideo)


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)

    def add(self, what: str, model, ids) -> None:
        ids = sorted(ids)
        if ids:
            self.counts[what] += len(ids)
            self.details.append(f"{what}: {model._meta.verbose_name} {', '.join(map(str, ids[:20]))}"
                                + (" ..." if len(ids) > 20 else ""))

    def __bool__(self) -> bool:
        return bool(self.counts)


def sweep(report: Report | None = None) -> Report:
    """Requeue stuck work (see the module docstring)."""
    report = report or Report()
    now = timezone.now()
    alive = list(health.alive_workers().values_list("worker", flat=True))
    for model in MODELS:
        orphaned = model.objects.filter(status=IndexState.PROCESSING).filter(
            Q(claim_until__lt=now) | ~Q(claimed_by__in=alive))
        given_up, requeued = [], []
        for pk, token, attempts in orphaned.values_list("pk", "claim_token", "attempts"):
            if attempts >= settings.MVMATCH_MAX_ATTEMPTS:
                if model.objects.filter(pk=pk, claim_token=token).update(
                        status=IndexState.FAILED, error=f"processing was interrupted {attempts} times "
                                                        "(its worker died or ran past the lease)",
                        claim_token="", claimed_by="", claim_until=None):
                    services.forget_item(model, pk)
                    given_up.append(pk)
            elif model.objects.filter(pk=pk, claim_token=token, status=IndexState.PROCESSING).update(
                    status=IndexState.QUEUED, claim_token="", claimed_by="", claim_until=None, queued_at=now):
                services.send_to_workers(model, pk)
                requeued.append(pk)
        report.add("failed after repeated interruptions", model, given_up)
        report.add("requeued from a dead worker", model, requeued)
        stale = now - timedelta(seconds=settings.MVMATCH_QUEUED_RESEND_SECONDS)
        resent = []
        for pk, queued_at in model.objects.filter(Q(queued_at__lt=stale) | Q(queued_at__isnull=True),
                                                  status=IndexState.QUEUED).values_list("pk", "queued_at"):
            if model.objects.filter(pk=pk, status=IndexState.QUEUED, queued_at=queued_at).update(queued_at=now):
                services.send_to_workers(model, pk)
                resent.append(pk)
        report.add("sent again after waiting too long", model, resent)
    return report


def repair(report: Report | None = None) -> Report:
    """Make the index and the review queue agree with the rows (see the module docstring)."""
    report = report or Report()
    for version in ModelVersion.objects.all():
        for model in MODELS:
            index = services.index_of(model)(version)
            in_index = index.ids()
            rows = dict((pk, (status, version_id)) for pk, status, version_id in
                        model.objects.values_list("pk", "status", "model_version_id"))
            orphans = {pk for pk in in_index if pk not in rows}
            foreign = {pk for pk in in_index & rows.keys()
                       if rows[pk][0] == IndexState.FAILED
                       or (rows[pk][0] == IndexState.INDEXED and rows[pk][1] != version.pk)}
            index.delete(sorted(orphans | foreign))
            report.add(f"vectors without a row in {version.name}", model, orphans)
            report.add(f"vectors of another version or a failed item in {version.name}", model, foreign)
            missing = [pk for pk, (status, version_id) in rows.items()
                       if status == IndexState.INDEXED and version_id == version.pk and pk not in in_index]
            services.requeue(model.objects.filter(pk__in=missing))
            report.add(f"indexed rows without a vector in {version.name}, requeued", model, missing)
    stale = Match.objects.filter(status=Match.Review.PENDING).filter(
        Q(video__status=IndexState.FAILED) | Q(product__status=IndexState.FAILED)
        | ~Q(video__model_version=F("model_version")) | ~Q(product__model_version=F("model_version")))
    report.add("pending matches of failed items or of another model version", Match, stale.values_list("pk", flat=True))
    stale.delete()
    return report


def reconcile() -> Report:
    return repair(sweep())
