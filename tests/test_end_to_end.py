"""The whole path on real parts: HTTP API -> broker -> Celery worker -> ffmpeg -> encoders -> Milvus -> API.

Two deployments of the same code: the embedded default (SQLite, filesystem broker) and the
scale-out one (PostgreSQL when it answers, Redis broker); both use a milvus-lite server because the
web process and the worker share the index.
"""
import json
import os
import uuid
from pathlib import Path

import pytest

from matching.vector_index import MilvusLiteServer
from ml.build import BuildConfig, build
from ml.datagen import SIZES, generate_dataset
from ml.text_search import short_query
from tests.stack import Stack

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES = os.environ.get("MVMATCH_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A small model trained end to end by our own code (tower + MQMC) on generated data."""
    out = tmp_path_factory.mktemp("model") / "bundle"
    build(out, BuildConfig(name="e2e", data_size="tiny-train", tower_steps=40, epochs=8, batch_size=16,
                           queue_size=16, workers=1, progress=False, salient_frames=True))
    return out


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("demo-data"), SIZES["tiny"], seed=0, progress=False)


def redis_answers() -> bool:
    import redis

    try:
        return redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError:
        return False


def postgres_database() -> str | None:
    """A fresh database on the local PostgreSQL, or None when it does not answer."""
    import psycopg

    name = f"mvmatch_e2e_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        return None
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["embedded", "redis"])
def stack(request, tmp_path, bundle):
    if request.param == "redis":
        if not redis_answers():
            pytest.fail(f"Redis does not answer on {REDIS_URL} (deploy/test.sh starts it)")
        import redis
        redis.Redis.from_url(REDIS_URL).flushdb()
        kwargs = {"broker": REDIS_URL, "database_url": postgres_database()}
    else:
        kwargs = {}
    with MilvusLiteServer(tmp_path / "milvus") as milvus_uri:
        s = Stack(tmp_path, milvus_uri=milvus_uri, **kwargs)
        try:
            yield s.start(bundle)
        finally:
            s.stop()


def create_product(stack: Stack, manifest, product) -> dict:
    files = [("photos", (Path(rel).name, (manifest.root / rel).read_bytes(), "image/jpeg")) for rel in product.images]
    r = stack.post("/api/products/", data={"title": product.title, "description": product.description,
                                           "price": f"{product.price:.2f}", "category": product.category_path,
                                           "sku": product.sku}, files=files)
    assert r.status_code == 201, r.text
    return r.json()


def upload_video(stack: Stack, path: Path, caption: str):
    return stack.post("/api/videos/", data={"caption": caption}, files={"file": (path.name, path.read_bytes(), "video/mp4")})


def test_upload_to_suggestions_on_real_parts(stack, catalogue):
    stack.login("merchant")
    products = {p.sku: create_product(stack, catalogue, p) for p in catalogue.products}
    for body in products.values():
        done = stack.wait_status(f"/api/products/{body['id']}/")
        assert done["status"] == "indexed", done

    stack.login("publisher")
    videos = catalogue.videos_in("test")
    ranks = []
    for v in videos:
        r = upload_video(stack, catalogue.root / v.file, v.caption)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        done = stack.wait_status(f"/api/videos/{r.json()['id']}/")
        assert done["status"] == "indexed", done
        assert len(done["keyframes"]) == 8 and done["model_version"] == "e2e (active)"
        # Second stage (ml.two_stage): the stored embedding pools the 3 salient frames; a category is predicted.
        assert sum(kf["salient"] for kf in done["keyframes"]) == 3
        assert done["predicted_category"].count("/") == 2 and 0 < done["predicted_confidence"] <= 1
        sugg = stack.get(f"/api/videos/{done['id']}/suggestions/?k=5")
        assert sugg.status_code == 200
        hits = sugg.json()
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1)) and len(hits) == 5
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        assert all(0 <= h["frame_position"] < 8 and -1 <= h["index_score"] <= 1 for h in hits)
        true_id = products[v.product_sku]["id"]
        ranks.append(next((h["rank"] for h in hits if h["product"]["id"] == true_id), None))
        # the other direction: the product finds this video among its placements
        stack.login("merchant")
        placements = stack.get(f"/api/products/{true_id}/videos/?k=10").json()
        assert done["id"] in [p["video"]["id"] for p in placements]
        stack.login("publisher")
    # A trained model: the true product among the top 5 of 12 for most videos (chance: 5/12).
    assert sum(r is not None for r in ranks) >= len(ranks) / 2, ranks

    # Text search: one query vector searches both collections; a short query finds its product.
    target = catalogue.product(videos[0].product_sku)
    found = stack.get("/api/search/", params={"q": short_query(target), "k": 5}).json()
    assert len(found["products"]) == 5 and len(found["videos"]) == len(videos)
    assert all(a["score"] >= b["score"] for a, b in zip(found["products"], found["products"][1:]))
    assert {h["product"]["id"] for h in found["products"]} <= {p["id"] for p in products.values()}
    assert products[target.sku]["id"] in [h["product"]["id"] for h in found["products"]], found
    assert stack.get("/api/search/", params={"q": "  "}).status_code == 400

    # Filtered by category subtree: only that subtree comes back.
    category = catalogue.product(videos[0].product_sku).category_path.rsplit("/", 1)[0]
    first = stack.get("/api/videos/").json()["results"][0]
    hits = stack.get(f"/api/videos/{first['id']}/suggestions/", params={"category": category}).json()
    assert hits and all(h["product"]["category"].startswith(category + "/") for h in hits)

    # Re-running a finished task changes nothing: same rows, same index size.
    before = stack.shell("from matching.models import Match; print(Match.objects.count())")
    stack.shell(f"from workers.tasks import ingest_video; ingest_video.delay({first['id']})")
    counts = stack.shell("from matching import services as s; from matching.models import MicroVideo; "
                         "v = s.active_model_version(); print(s.video_index(v).count(), MicroVideo.objects.count())")
    assert counts.split() == [str(len(videos))] * 2
    assert stack.shell("from matching.models import Match; print(Match.objects.count())") == before
    # One model load per worker process, however many tasks it ran.
    assert stack.log("worker").count("loading model bundle") == 1

    # The lookup benchmark times both orders on these records and writes nothing.
    bench = json.loads(stack.manage("bench_lookup", "--repeats", "1", "--k", "5", "--top-n", "10"))
    assert bench["video -> products"]["records"] == len(videos) and bench["product -> videos"]["ratio"] > 0
    assert stack.shell("from matching.models import Match; print(Match.objects.count())") == before


def test_worker_survives_bad_input_and_marks_it_failed(stack, catalogue):
    """Files that break after upload (disk fault, tampering) fail their record with a reason; the
    worker keeps going, the next good video is indexed, and the index holds only the good one."""
    stack.login("publisher")
    source = catalogue.root / catalogue.videos_in("test")[0].file
    bad_ids = stack.shell(
        "from django.core.files.base import ContentFile; from django.contrib.auth import get_user_model; "
        "from matching.models import MicroVideo; from workers.tasks import ingest_video\n"
        "u = get_user_model().objects.get(username='publisher')\n"
        f"data = open('{source}', 'rb').read()\n"
        "ids = []\n"
        "for n, body in enumerate([data[:2000], b'garbage' * 100, data[: len(data) // 2]]):\n"
        "    v = MicroVideo(publisher=u, caption='broken', sha256=str(n) * 64)\n"
        "    v.file.save(f'broken{n}.mp4', ContentFile(body), save=False); v.save(); ids.append(v.pk)\n"
        "    ingest_video.delay(v.pk)\n"
        "print(*ids)").split()
    for video_id in bad_ids:
        done = stack.wait_status(f"/api/videos/{video_id}/")
        assert done["status"] == "failed" and done["error"].startswith(("could not", "not a video")), done
        assert stack.get(f"/api/videos/{video_id}/suggestions/").status_code == 409

    good = catalogue.videos_in("test")[1]
    r = upload_video(stack, catalogue.root / good.file, good.caption)
    assert stack.wait_status(f"/api/videos/{r.json()['id']}/")["status"] == "indexed"
    assert stack.alive("worker")
    indexed = stack.shell("from matching import services as s; print(s.video_index(s.active_model_version()).count())")
    assert indexed == "1"
