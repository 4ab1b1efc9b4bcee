"""Task bookkeeping: infrastructure faults are retried, input faults and bugs fail the record with a reason."""
import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError

from matching import services
from matching.indexing import IndexState
from matching.models import MicroVideo
from matching import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def video():
    owner = get_user_model().objects.create_user("pub")
    return MicroVideo.objects.create(publisher=owner, sha256="b" * 64, file="videos/x.mp4")


@pytest.fixture(autouse=True)
def _eager(eager_tasks):
    """Every test here runs its tasks in-process."""


def test_transient_fault_is_retried_then_succeeds(monkeypatch, video):
    calls = []

    def flaky(pk, **_):
        calls.append(pk)
        if len(calls) < 3:
            raise OperationalError("database is locked")
        MicroVideo.objects.filter(pk=pk).update(status=IndexState.INDEXED)
        return services.Outcome(IndexState.INDEXED)

    monkeypatch.setattr(services, "ingest_video", flaky)
    assert tasks.ingest_video.delay(video.pk).get() == IndexState.INDEXED
    assert len(calls) == 3


def test_transient_fault_that_persists_fails_the_record(monkeypatch, video):
    def down(pk, **_):
        raise ConnectionError("milvus unreachable")

    monkeypatch.setattr(services, "ingest_video", down)
    assert tasks.ingest_video.delay(video.pk).get() == IndexState.FAILED
    video.refresh_from_db()
    assert video.status == "failed" and "gave up after 5 retries: milvus unreachable" in video.error


def test_a_bug_fails_the_record_instead_of_leaving_it_processing(monkeypatch, video):
    def bug(pk, **_):
        MicroVideo.objects.filter(pk=pk).update(status=IndexState.PROCESSING)
        raise KeyError("oops")

    monkeypatch.setattr(services, "ingest_video", bug)
    assert tasks.ingest_video.delay(video.pk).get() == IndexState.FAILED
    video.refresh_from_db()
    assert video.status == "failed" and video.error.startswith("internal error: KeyError")


def test_no_active_model_is_a_clear_failure(video):
    assert tasks.ingest_video.delay(video.pk).get() == IndexState.FAILED
    video.refresh_from_db()
    assert "no active model version" in video.error


def test_deleted_record_is_not_an_error():
    assert tasks.ingest_video.delay(987654).get() == "missing"
