"""The trustworthy core on the live stack (web + prefork Celery worker + milvus-lite server): reads never write,
no fault strands or resurrects work, races end in one consistent state, operators can see health.

The race scenarios themselves live in tests/races.py, so that `python -m tests.races` can print them as a table.
"""
import hashlib
import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from matching.vector_index import MilvusLiteServer
from tests.conftest import make_video
from tests.races import FAST_RECOVERY, Faults
from tests.stack import REDIS_URL, Stack, redis_namespace

pytestmark = pytest.mark.slow

# The battery of reads below sends hundreds of requests in seconds; throttling is tested on its own.
UNTHROTTLED = {f"MVMATCH_THROTTLE_{scope}": "1000000/min" for scope in ("ANON", "USER", "TOKEN", "UPLOAD", "LOOKUP")}


@pytest.fixture(scope="module")
def live(tmp_path_factory, bundle):
    """One embedded stack for the module, with a product and an indexed video to work on."""
    tmp = tmp_path_factory.mktemp("faults")
    with MilvusLiteServer(tmp / "milvus") as milvus_uri:
        stack = Stack(tmp, milvus_uri=milvus_uri)
        stack.env.update(FAST_RECOVERY)
        stack.env.update(UNTHROTTLED)
        try:
            stack.start(bundle)
            stack.login("owner", roles=["publisher", "merchant"])
            faults = Faults(stack, make_video, tmp)
            photo = make_photo(tmp / "photo.png")
            with photo.open("rb") as fh:
                product = stack.post("/api/products/", data={"title": "red test pattern", "description": "bars",
                                                             "price": "9.50", "category": "clothes/bags/backpack"},
                                     files={"photos": (photo.name, fh, "image/png")})
            assert product.status_code == 201, product.text
            video = faults.upload("a bag on a test pattern")  # no category hint: the prediction stands in
            faults.product = stack.wait_status(f"/api/products/{product.json()['id']}/")
            faults.video = stack.wait_status(f"/api/videos/{video['id']}/")
            assert faults.product["status"] == faults.video["status"] == "indexed", (faults.product, faults.video)
            yield faults
        finally:
            stack.stop()


def make_photo(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


def snapshot(stack: Stack) -> str:
    """Every table and every vector of every collection, as one digestible text."""
    tables = stack.manage("dumpdata", "--indent", "0", "-e", "contenttypes", "-e", "auth.permission")
    vectors = stack.shell(
        "import json; from matching import services; from matching.models import ModelVersion; "
        "from catalog.models import Product; from matching.models import MicroVideo; "
        "out = {}\n"
        "for v in ModelVersion.objects.all():\n"
        "    for m in (Product, MicroVideo):\n"
        "        index = services.index_of(m)(v); ids = sorted(index.ids())\n"
        "        out[index.name] = {i: [round(float(x), 5) for x in vec] for i, vec in sorted(index.get(ids).items())}\n"
        "print(json.dumps(out, sort_keys=True))")
    media = sorted(str(p.relative_to(stack.workdir)) for p in (stack.workdir / "media").rglob("*") if p.is_file())
    return tables + vectors + json.dumps(media)


def test_reads_are_pure(live):
    """Every GET, HEAD and OPTIONS, with every parameter combination, as the owner, another user and staff:
    the database, the index and the media files are byte for byte the same afterwards."""
    stack, product, video = live.stack, live.product, live.video
    users = []
    for user, roles, staff in (("stranger", ["merchant"], False), ("operator", [], True),
                               ("owner", ["publisher", "merchant"], False)):
        stack.login(user, staff=staff, roles=roles)
        users.append(stack.session.headers["Authorization"])
    stack.pause("worker")  # its heartbeat is the one writer left; pause it for the battery
    try:
        before = snapshot(stack)
        paths = ["/api/", "/api/products/", "/api/videos/", "/api/categories/", "/api/categories/?level=middle",
                 "/api/health/", "/api/schema/", f"/api/products/{product['id']}/", f"/api/videos/{video['id']}/"]
        for k in ("", "k=1", "k=3", "k=100"):
            for category in ("", "category=clothes", "category=cosmetics", "category=clothes/bags/backpack"):
                query = "&".join(p for p in (k, category) if p)
                paths += [f"/api/videos/{video['id']}/suggestions/?{query}",
                          f"/api/products/{product['id']}/videos/?{query}",
                          f"/api/search/?q=red+bag&{query}"]
        codes = set()
        for token in users:
            for path in paths:
                for method in ("GET", "HEAD", "OPTIONS"):
                    codes.add(stack.session.request(method, stack.base + path, timeout=60,
                                                    headers={"Authorization": token}).status_code)
        after = snapshot(stack)
    finally:
        stack.signal_tree("worker", signal.SIGCONT)
    assert 200 in codes and codes <= {200, 403, 404, 503}, codes
    assert hashlib.sha256(before.encode()).hexdigest() == hashlib.sha256(after.encode()).hexdigest(), \
        "a read changed the stored state"


def test_lookup_parameters_only_shape_the_answer(live):
    """?k and ?category shape the answer; the review queue is what indexing recorded."""
    stack, video = live.stack, live.video
    queue = stack.get(f"/api/videos/{video['id']}/suggestions/?k=100").json()
    assert len(stack.get(f"/api/videos/{video['id']}/suggestions/?k=1").json()) == 1
    assert stack.get(f"/api/videos/{video['id']}/suggestions/?k=100").json() == queue
    recorded = json.loads(stack.shell(f"from matching.models import Match; import json; print(json.dumps("
                                      f"Match.objects.filter(video_id={video['id']}, direction='v2p').count()))"))
    assert recorded == len(queue) >= 1  # the indexing task recorded the top list once


def test_category_filter_uses_the_videos_own_or_predicted_category(live):
    """A video without a category hint is filtered by its predicted category, in the product->videos lookup."""
    stack, product, video = live.stack, live.product, live.video
    predicted = stack.get(f"/api/videos/{video['id']}/").json()["predicted_category"]
    assert predicted and video["category"] is None
    upper = predicted.split("/")[0]
    other = next(u for u in ("clothes", "cosmetics", "food") if u != upper)
    inside = [h["video"]["id"] for h in stack.get(f"/api/products/{product['id']}/videos/?k=50&category={upper}").json()]
    outside = [h["video"]["id"] for h in stack.get(f"/api/products/{product['id']}/videos/?k=50&category={other}").json()]
    assert video["id"] in inside and video["id"] not in outside, (predicted, inside, outside)


def test_a_long_read_does_not_hold_up_writes(live):
    """The embedded SQLite runs in write-ahead-log mode: a reader in the middle of a transaction (a slow lookup,
    a worker paused mid-read) leaves writers free; in rollback-journal mode the write waits for the reader."""
    reader = sqlite3.connect(live.stack.workdir / "mvmatch.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("SELECT count(*) FROM catalog_product").fetchone()
        started = time.monotonic()
        live.stack.shell("from django.contrib.auth import get_user_model; "
                         "get_user_model().objects.create(username='writer-during-a-read')")
        assert time.monotonic() - started < 20  # the write waited for no lock (the busy timeout is 30 s)
    finally:
        reader.execute("ROLLBACK")
        reader.close()


def test_recompute_keeps_decisions_and_checks_ownership(live):
    stack, video = live.stack, live.video
    decided = stack.shell(
        "from django.utils import timezone; from matching.models import Match; "
        f"m = Match.objects.filter(video_id={video['id']}, direction='v2p').order_by('rank').last(); "
        "Match.objects.filter(pk=m.pk).update(status='approved', reviewed_at=timezone.now()); print(m.pk)")
    response = stack.post(f"/api/videos/{video['id']}/recompute/")
    assert response.status_code == 200, response.text
    status = stack.shell(f"from matching.models import Match; print(Match.objects.get(pk={decided}).status)")
    assert status == "approved"
    stack.login("stranger", roles=["publisher"])
    try:
        assert stack.post(f"/api/videos/{video['id']}/recompute/").status_code == 404
    finally:
        stack.login("owner", roles=["publisher", "merchant"])


def test_delete_during_processing_leaves_nothing(live):
    result = live.delete_during_processing()
    assert result.ok, result


def test_edit_during_processing_indexes_the_new_content(live):
    result = live.edit_during_processing(live.product["id"])
    assert result.ok, result


def test_two_uploads_of_one_file_at_once(live):
    result = live.duplicate_upload_race()
    assert result.ok, result


def test_two_workers_index_an_item_once(live):
    result = live.two_workers_one_item(live.video["id"])
    assert result.ok, result


def test_worker_log_tells_outcomes(live):
    """One line per task outcome (item, status, seconds, reason), from the task code's own logger."""
    log = live.stack.log("worker")
    assert re.search(rf"ingest microvideo {live.video['id']}: indexed in \d+\.\d\d s", log), log[-3000:]
    assert re.search(rf"ingest product {live.product['id']}: indexed in \d+\.\d\d s", log), log[-3000:]


def test_killed_worker_is_redone_once_without_a_command(live):
    """Embedded broker: the message is gone with the dead worker; the restarted worker's reconciler requeues."""
    result = live.killed_worker("embedded broker: the workers' reconciler")
    assert result.ok, result
    assert "requeued from a dead worker" in live.stack.log("worker")


def test_health_and_uploads_without_a_worker(live):
    stack = live.stack
    stack.login("operator", staff=True)
    try:
        report = stack.get("/api/health/")
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["ok"] and body["database"]["ok"] and body["index"]["ok"] and body["broker"]["ok"], body
        assert body["workers"]["alive"] == 1 and body["queue"]["depth"] == 0, body
        stack.procs["worker"].terminate()
        stack.procs.pop("worker").wait(30)
        down = stack.get("/api/health/")
        assert down.status_code == 503 and down.json()["workers"]["alive"] == 0, down.text
        stack.session.headers.pop("Authorization")
        assert stack.get("/api/health/").json() == {"ok": False}  # anonymous: no details
        stack.login("owner", roles=["publisher", "merchant"])
        queued = live.upload("while no worker runs")
        assert "no worker is running" in queued.get("warning", ""), queued
        stack.login("operator", staff=True)
        waiting = stack.get("/api/health/").json()["queue"]
        assert waiting["depth"] == 1 and waiting["oldest_age_seconds"] is not None, waiting
        stack.login("owner", roles=["publisher", "merchant"])
        stack.start_worker()
        assert stack.wait_status(f"/api/videos/{queued['id']}/")["status"] == "indexed"
    finally:
        stack.login("owner", roles=["publisher", "merchant"])
        if "worker" not in stack.procs or not stack.alive("worker"):
            stack.start_worker()


@pytest.mark.redis
def test_killed_worker_is_redelivered_by_redis(tmp_path, bundle):
    """Redis broker, reconciler off: the unacknowledged task returns to the queue and the restarted worker
    finishes it, once."""
    with MilvusLiteServer(tmp_path / "milvus") as milvus_uri, redis_namespace() as prefix:
        stack = Stack(tmp_path, milvus_uri=milvus_uri, broker=REDIS_URL, redis_key_prefix=prefix)
        stack.env.update({"MVMATCH_RECONCILE_SECONDS": "0", "MVMATCH_BROKER_VISIBILITY_SECONDS": "5"})
        try:
            stack.start(bundle)
            stack.login("owner", roles=["publisher"])
            result = Faults(stack, make_video, tmp_path).killed_worker("Redis: redelivery of the unacked task")
            assert result.ok, result
            assert "requeued from a dead worker" not in stack.log("worker")  # Redis did it, not the reconciler
        finally:
            stack.stop()
