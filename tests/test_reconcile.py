"""The ingest protocol's rules and the reconciler, on a real database and a real milvus-lite index.

The model is left out (vectors are made here); the live-stack races are in tests/test_faults.py.
"""
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from catalog.models import Category, Product
from matching import reconcile, services
from matching.indexing import IndexState
from matching.models import Match, MicroVideo, ModelVersion, WorkerHeartbeat

pytestmark = pytest.mark.django_db
DIM = 4


@pytest.fixture
def version():
    return ModelVersion.objects.create(name="v1", bundle_path="/nonexistent", embed_dim=DIM, is_active=True)


@pytest.fixture
def merchant():
    return get_user_model().objects.create_user("merchant")


def product(merchant, **fields) -> Product:
    category = Category.objects.get(path="clothes/bags/backpack")
    return Product.objects.create(merchant=merchant, title="bag", price=1, category=category, **fields)


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def processed(item) -> services._Processed:
    return services._Processed(vector=vector(item.pk), detail=None, category=item.category)


def test_a_claim_is_exclusive_and_a_redelivered_task_takes_its_own_back(merchant, version):
    p = product(merchant)
    assert services._claim(Product, p.pk, "task-1", "w1") is None
    assert services._claim(Product, p.pk, "task-2", "w2") == services.BUSY
    assert services._claim(Product, p.pk, "task-1", "w1") is None  # the same message, delivered again
    p.refresh_from_db()
    assert (p.status, p.claim_token, p.attempts) == (IndexState.PROCESSING, "task-1", 1)
    Product.objects.filter(pk=p.pk).update(claim_until=timezone.now() - timedelta(seconds=1))
    assert services._claim(Product, p.pk, "task-2", "w2") is None  # the lease ran out
    assert services._claim(Product, 10 ** 9, "task-3", "w3") == services.MISSING


def test_publish_happens_only_at_the_revision_that_was_read(merchant, version, sent_tasks,
                                                            django_capture_on_commit_callbacks):
    p = product(merchant)
    services._claim(Product, p.pk, "task-1", "w1")
    item = Product.objects.get(pk=p.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.requeue(Product.objects.filter(pk=p.pk))  # an edit while the task works
    assert services._publish(item, "task-1", version, processed(item)).status == services.CHANGED
    p.refresh_from_db()
    assert p.status == IndexState.QUEUED and p.indexed_revision is None and p.claim_token == "task-1"
    again = Product.objects.get(pk=p.pk)  # the task goes round again with the new revision
    assert services._publish(again, "task-1", version, processed(again)).status == IndexState.INDEXED
    p.refresh_from_db()
    assert (p.status, p.indexed_revision, p.claim_token) == (IndexState.INDEXED, p.revision, "")


def test_publish_after_a_delete_leaves_no_vector(merchant, version):
    p = product(merchant)
    services._claim(Product, p.pk, "task-1", "w1")
    item = Product.objects.get(pk=p.pk)
    services.delete_product(p)
    assert services._publish(item, "task-1", version, processed(item)).status == services.LOST
    assert item.pk not in services.product_index(version).ids()


def test_saving_a_stale_copy_does_not_undo_what_a_worker_published(merchant, version):
    p = product(merchant)
    stale = Product.objects.get(pk=p.pk)
    Product.objects.filter(pk=p.pk).update(status=IndexState.INDEXED, model_version=version, indexed_revision=1)
    stale.title = "edited"
    stale.save()
    p.refresh_from_db()
    assert (p.title, p.status, p.indexed_revision) == ("edited", IndexState.INDEXED, 1)


def test_sweep_requeues_work_of_dead_workers_and_fails_an_item_that_keeps_killing_them(
        merchant, version, sent_tasks, django_capture_on_commit_callbacks, settings):
    now = timezone.now()
    WorkerHeartbeat.objects.create(worker="alive/1", hostname="alive", started_at=now, last_seen=now)
    lease = now + timedelta(hours=1)
    running = product(merchant, status=IndexState.PROCESSING, claim_token="t1", claimed_by="alive/1",
                      claim_until=lease, attempts=1)
    orphaned = product(merchant, status=IndexState.PROCESSING, claim_token="t2", claimed_by="dead/2",
                       claim_until=lease, attempts=1)
    expired = product(merchant, status=IndexState.PROCESSING, claim_token="t3", claimed_by="alive/1",
                      claim_until=now - timedelta(seconds=1), attempts=1)
    poison = product(merchant, status=IndexState.PROCESSING, claim_token="t4", claimed_by="dead/2",
                     claim_until=lease, attempts=settings.MVMATCH_MAX_ATTEMPTS)
    forgotten = product(merchant, status=IndexState.QUEUED)
    Product.objects.filter(pk=forgotten.pk).update(queued_at=now - timedelta(days=1))
    fresh = product(merchant, status=IndexState.QUEUED)
    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile.sweep()
    assert sorted(sent_tasks) == sorted(("product", p.pk) for p in (orphaned, expired, forgotten))
    states = dict(Product.objects.values_list("pk", "status"))
    assert states[running.pk] == IndexState.PROCESSING and states[fresh.pk] == IndexState.QUEUED
    assert states[orphaned.pk] == states[expired.pk] == IndexState.QUEUED
    poison.refresh_from_db()
    assert poison.status == IndexState.FAILED and "interrupted 3 times" in poison.error
    assert report.counts["requeued from a dead worker"] == 2
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile.sweep()
    assert sent_tasks == []  # once requeued, not again


def test_repair_mends_every_kind_of_drift(merchant, version, sent_tasks, django_capture_on_commit_callbacks):
    old = ModelVersion.objects.create(name="v0", bundle_path="/nonexistent", embed_dim=DIM)
    index, old_index = services.product_index(version), services.product_index(old)
    healthy = product(merchant, status=IndexState.INDEXED, model_version=version)
    lost_vector = product(merchant, status=IndexState.INDEXED, model_version=version)
    failed = product(merchant, status=IndexState.FAILED)
    index.upsert([healthy.pk, failed.pk, 999_999], np.stack([vector(1), vector(2), vector(3)]), [1] * 3, [1] * 3,
                 [1] * 3)
    old_index.upsert([healthy.pk], vector(4)[None], [1], [1], [1])  # left behind by the previous version
    video = MicroVideo.objects.create(publisher=merchant, sha256="a" * 64, file="videos/x.mp4",
                                      status=IndexState.INDEXED, model_version=version)
    pending = Match.objects.create(video=video, product=failed, direction="v2p", score=0.5, rank=1,
                                   model_version=version)
    kept = Match.objects.create(video=video, product=healthy, direction="v2p", score=0.5, rank=2,
                                model_version=version)
    stale = Match.objects.create(video=video, product=lost_vector, direction="v2p", score=0.5, rank=3,
                                 model_version=old)
    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile.repair()
    assert index.ids() == {healthy.pk}
    assert old_index.ids() == set()
    assert ("product", lost_vector.pk) in sent_tasks and ("video", video.pk) in sent_tasks  # the video had no vector either
    assert set(Match.objects.values_list("pk", flat=True)) == {kept.pk}
    assert not Match.objects.filter(pk__in=[pending.pk, stale.pk]).exists()
    lines = "\n".join(report.details)
    assert "vectors without a row in v1: product 999999" in lines
    assert f"vectors of another version or a failed item in v0: product {healthy.pk}" in lines


def test_a_failed_item_is_findable_nowhere(merchant, version):
    p = product(merchant, status=IndexState.PROCESSING, claim_token="t1")
    services.product_index(version).upsert([p.pk], vector(1)[None], [1], [1], [1])
    assert services.fail(Product, p.pk, "t1", "broken photo")
    assert p.pk not in services.product_index(version).ids()
    assert not services.fail(Product, p.pk, "t2", "another task's word")  # it holds no claim: only the owner decides
