"""Staff review in the admin: thumbnails side by side, bulk approve/reject, who decided and when, filters."""
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from PIL import Image

from catalog.models import Category, Product, ProductImage
from matching.indexing import IndexState
from matching.models import Keyframe, Match, MicroVideo, ModelVersion

pytestmark = pytest.mark.django_db


def jpeg(color) -> ContentFile:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return ContentFile(buf.getvalue())


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("staff", password="pw")
    client.force_login(user)
    return user


@pytest.fixture
def matches():
    owner = get_user_model().objects.create_user("owner")
    version = ModelVersion.objects.create(name="v1", bundle_path="/tmp/v1", embed_dim=8, is_active=True)
    video = MicroVideo.objects.create(publisher=owner, caption="my new bag #ootd", sha256="a" * 64,
                                      status=IndexState.INDEXED, model_version=version)
    for i in range(3):
        kf = Keyframe(video=video, position=i, timestamp=i * 0.5)
        kf.image.save(f"kf{i}.jpg", jpeg((i * 80, 0, 0)), save=False)
        kf.save()
    out = []
    for i, (path, score) in enumerate([("clothes/bags/backpack", 0.91), ("food/fruits/mango", 0.42)]):
        product = Product.objects.create(merchant=owner, title=f"product {i}", price=1,
                                         category=Category.objects.get(path=path), status=IndexState.INDEXED)
        img = ProductImage(product=product)
        img.image.save(f"p{i}.jpg", jpeg((0, 0, 200)), save=False)
        img.save()
        out.append(Match.objects.create(video=video, product=product, direction="v2p", score=score, rank=i + 1,
                                        model_version=version))
    return out


def test_changelist_shows_keyframes_and_photo_side_by_side(client, staff, matches):
    r = client.get("/admin/matching/match/")
    assert r.status_code == 200
    html = r.content.decode()
    assert html.count("/files/keyframes/") >= 3 * len(matches)  # every keyframe thumbnail, per row
    assert "/files/photos/" in html and "0.910" in html and "clothes/bags/backpack" in html
    detail = client.get(f"/admin/matching/match/{matches[0].pk}/change/").content.decode()
    assert "side by side" in detail.lower() and "my new bag" in detail


def test_review_page_outlines_the_frame_that_drove_the_match_and_fades_unsalient_ones(client, staff, matches):
    Keyframe.objects.filter(video=matches[0].video, position=0).update(salient=False)
    Match.objects.filter(pk=matches[0].pk).update(frame_position=2, index_score=0.8)
    video = matches[0].video
    MicroVideo.objects.filter(pk=video.pk).update(  # what the ingest publishes (saving a copy cannot)
        predicted_category=Category.objects.get(path="clothes/bags/backpack"), predicted_confidence=0.73)
    detail = client.get(f"/admin/matching/match/{matches[0].pk}/change/").content.decode()
    assert detail.count("drove this match") == 1 and "frame 2 at 1.0 s: drove this match" in detail
    assert detail.count("(not salient)") == 1 and "opacity:.35" in detail
    other = client.get(f"/admin/matching/match/{matches[1].pk}/change/").content.decode()
    assert "drove this match" not in other  # no frame recorded: nothing outlined
    videos = client.get("/admin/matching/microvideo/").content.decode()
    assert "clothes/bags/backpack (73 %)" in videos


def test_bulk_approve_and_reject_record_who_and_when(client, staff, matches):
    good, bad = matches
    r = client.post("/admin/matching/match/", {"action": "approve", "_selected_action": [good.pk]}, follow=True)
    assert r.status_code == 200
    client.post("/admin/matching/match/", {"action": "reject", "_selected_action": [bad.pk]})
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, good.reviewed_by, bad.status, bad.reviewed_by) == ("approved", staff, "rejected", staff)
    assert good.reviewed_at is not None and bad.reviewed_at is not None


@pytest.mark.parametrize("query, expected", [
    ("status__exact=pending", {"product 0", "product 1"}),
    ("score=high", {"product 0"}),
    ("score=low", {"product 1"}),
    ("upper_category={food}", {"product 1"}),
    ("middle_category={bags}", {"product 0"}),
])
def test_filters(client, staff, matches, query, expected):
    ids = {"food": Category.objects.get(path="food").pk, "bags": Category.objects.get(path="clothes/bags").pk}
    html = client.get("/admin/matching/match/?" + query.format(**ids)).content.decode()
    shown = {title for title in ("product 0", "product 1") if f">{title}<" in html}
    assert shown == expected


def test_reviewed_match_keeps_its_decision_when_suggestions_refresh(staff, matches):
    from matching import services

    services.review(Match.objects.filter(pk=matches[0].pk), staff, Match.Review.APPROVED)
    rows = [(matches[0].video_id, m.product_id, 0.5, 0.4, None) for m in matches[::-1]]
    services._record(Match.Direction.VIDEO_TO_PRODUCT, matches[0].model_version, {"video_id": matches[0].video_id}, rows)
    kept = Match.objects.get(pk=matches[0].pk)
    assert kept.status == "approved" and kept.rank == 2


def test_review_status_needs_a_timestamp_in_the_database(matches):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        Match.objects.filter(pk=matches[0].pk).update(status="approved")


def test_reindex_action_and_command_requeue(client, staff, matches, sent_tasks, django_capture_on_commit_callbacks):
    from django.core.management import call_command

    product = matches[0].product
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/admin/catalog/product/", {"action": "reindex", "_selected_action": [product.pk]})
    product.refresh_from_db()
    assert product.status == "queued" and sent_tasks == [("product", product.pk)]

    # A new active version: `reindex` queues everything not yet embedded by it, once.
    ModelVersion.objects.update(is_active=False)
    ModelVersion.objects.create(name="v2", bundle_path="/tmp/v2", embed_dim=8, is_active=True)
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("reindex")
    assert sorted(kind for kind, _ in sent_tasks) == ["product", "product", "video"]


def test_admin_search_falls_back_to_words_when_search_by_meaning_cannot_answer(client, staff, matches):
    """The active model of this fixture has no bundle on disk: the word search still answers, with a notice."""
    r = client.get("/admin/catalog/product/", {"q": "product 1"})
    html = r.content.decode()
    assert r.status_code == 200 and "product 1" in html and "unavailable" in html
    assert "1 result" in html
