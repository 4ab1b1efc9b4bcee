"""The REST API: products and micro-videos, and every bad input the issue names.

Each bad input must get a clear 4xx and change nothing: no row, no stored file, no queued task.
"""
import io
import shutil
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from catalog.models import Product, ProductImage
from matching.models import MicroVideo
from tests.conftest import make_video

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    """Both roles: these tests create products and upload videos with one account."""
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user("merchant", password="pw")
    user.groups.add(*Group.objects.filter(name__in=["merchant", "publisher"]))
    return user


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def queued(sent_tasks):
    """Tasks that would be sent to the broker (the API enqueues after commit)."""
    return sent_tasks


@pytest.fixture
def post(api, django_capture_on_commit_callbacks):
    """POST as the client does, then run the on-commit hooks the request registered, as the commit that ends
    a real request would: the test's wrapping transaction never commits, so without this a task queued by
    mistake would never show in ``queued``."""
    def send(url: str, data: dict):
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(url, data, format="multipart")
    return send


def png(color=(200, 30, 30)) -> SimpleUploadedFile:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return SimpleUploadedFile("photo.png", buf.getvalue(), content_type="image/png")


def upload(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="video/mp4")


def nothing_stored(settings):
    media = Path(settings.MEDIA_ROOT)
    return not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_token_auth_required(client):
    assert APIClient().get("/api/products/").status_code == 401
    from django.contrib.auth.models import Group
    get_user_model().objects.create_user("bob", password="pw").groups.add(Group.objects.get(name="merchant"))
    token = APIClient().post("/api/auth/token/", {"username": "bob", "password": "pw"}).json()["token"]
    authed = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    assert authed.get("/api/products/").status_code == 200


@pytest.mark.parametrize("category", ["clothes/bags/backpank", "backpack"])
def test_create_product_by_path_or_name_with_photos(post, queued, category):
    r = post("/api/products/", {"title": "Red canvas backpack", "description": "Roomy.", "price": "39.90",
                                "category": category, "photos": [png(), png((0, 0, 200))]})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["category"]["path"] == "clothes/bags/backpack"
    assert body["status"] == "queued" and len(body["images"]) == 2
    assert queued == [("product", body["id"])]


def test_create_product_by_category_id(post, queued):
    from catalog.models import Category
    cat = Category.objects.get(path="food/fruits/mango")
    r = post("/api/products/", {"title": "Mango box", "price": "5", "category": cat.pk, "photos": [png()]})
    assert r.status_code == 201 and r.json()["category"]["id"] == cat.pk
    assert queued == [("product", r.json()["id"])]


@pytest.mark.parametrize("fields, field, message", [
    ({"category": "clothes/bags/spaceship"}, "category", "unknown category path"),
    ({"category": "clothes/bags"}, "category", "lower category is required"),
    ({"category": "cream"}, "category", "ambiguous"),
    ({"title": "   "}, "title", "blank"),
    ({"price": "-1"}, "price", "greater than or equal to 0"),
    ({"photos": []}, "photos", "This field is required"),
])
def test_bad_product_input_is_rejected_and_changes_nothing(post, queued, settings, fields, field, message):
    data = {"title": "Mango box", "price": "5", "category": "food/fruits/mango", "photos": [png()], **fields}
    if data["photos"] == []:
        del data["photos"]
    r = post("/api/products/", data)
    assert r.status_code == 400
    assert field in r.json() and message in str(r.json()[field])
    assert Product.objects.count() == 0 and ProductImage.objects.count() == 0 and queued == []
    assert nothing_stored(settings)


def test_photo_that_is_not_an_image_is_rejected(post, queued, settings):
    fake = SimpleUploadedFile("photo.png", b"not an image at all", content_type="image/png")
    r = post("/api/products/", {"title": "x", "price": "1", "category": "food/fruits/mango", "photos": [fake]})
    assert r.status_code == 400 and "Upload a valid image" in str(r.json()["photos"])
    assert Product.objects.count() == 0 and queued == [] and nothing_stored(settings)


def test_upload_video_queues_it(api, post, queued, video_file):
    r = post("/api/videos/", {"file": upload(video_file), "caption": "new bag! #ootd"})
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["status"] == "queued" and body["duration"] == pytest.approx(1.5, abs=0.2)
    assert queued == [("video", body["id"])]
    poll = api.get(f"/api/videos/{body['id']}/")
    assert poll.status_code == 200 and poll.json()["status"] == "queued"
    # suggestions before indexing: a clear conflict, not an empty list
    r = api.get(f"/api/videos/{body['id']}/suggestions/")
    assert r.status_code == 409 and "not indexed yet" in r.json()["detail"]


def test_empty_caption_is_accepted(api, queued, video_file):
    """Many micro-videos carry no caption: the frames alone are matched."""
    r = api.post("/api/videos/", {"file": upload(video_file), "caption": "   "}, format="multipart")
    assert r.status_code == 202 and r.json()["caption"] == ""


def test_webm_mov_mkv_accepted(api, queued, tmp_path):
    for ext, codec in [("webm", "libvpx"), ("mov", "libx264"), ("mkv", "libx264")]:
        path = make_video(tmp_path / f"c.{ext}", codec=codec, pattern="testsrc")
        r = api.post("/api/videos/", {"file": upload(path)}, format="multipart")
        assert r.status_code == 202, (ext, r.content)


def _bad_inputs(tmp_path: Path, video_file: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file to upload, words the error must contain)."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video_file.read_bytes()[: video_file.stat().st_size // 3])
    audio = tmp_path / "audio.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio)],
                   check=True)
    image = tmp_path / "still.mp4"
    Image.new("RGB", (64, 64), (0, 128, 0)).save(image, format="PNG")
    long = make_video(tmp_path / "long.mp4", seconds=8)
    wrong_ext = tmp_path / "clip.gif"
    shutil.copy(video_file, wrong_ext)
    return {
        "zero-byte": (empty, "empty"),
        "text named .mp4": (text, "not a video"),
        "truncated mp4": (truncated, "truncated or corrupt"),
        "audio only": (audio, "no video stream"),
        "image as video": (image, "image"),
        "over duration limit": (long, "limit"),
        "unsupported extension": (wrong_ext, "unsupported file type"),
    }


def test_each_bad_video_gets_a_clear_400_and_changes_nothing(post, queued, settings, tmp_path, video_file):
    settings.MVMATCH_MAX_VIDEO_SECONDS = 5
    for name, (path, words) in _bad_inputs(tmp_path, video_file).items():
        r = post("/api/videos/", {"file": upload(path), "caption": "x"})
        assert r.status_code == 400, (name, r.content)
        message = " ".join(r.json()["file"]).lower()
        assert words in message, (name, message)
    assert MicroVideo.objects.count() == 0 and queued == []
    assert nothing_stored(settings)


def test_video_over_size_limit(post, queued, settings, video_file):
    settings.MVMATCH_MAX_UPLOAD_BYTES = video_file.stat().st_size - 1
    r = post("/api/videos/", {"file": upload(video_file)})
    assert r.status_code == 400 and "the limit is" in r.json()["file"][0]
    assert MicroVideo.objects.count() == 0 and queued == [] and nothing_stored(settings)


def test_too_long_caption(post, queued, settings, video_file):
    r = post("/api/videos/", {"file": upload(video_file), "caption": "#sale " * 2000})
    assert r.status_code == 400 and "limit is" in r.json()["caption"][0]
    assert MicroVideo.objects.count() == 0 and queued == [] and nothing_stored(settings)


def test_unknown_video_category(post, queued, settings, video_file):
    r = post("/api/videos/", {"file": upload(video_file), "category": "food/space"})
    assert r.status_code == 400 and "unknown category" in str(r.json()["category"])
    assert MicroVideo.objects.count() == 0 and queued == [] and nothing_stored(settings)


def test_duplicate_upload_is_a_conflict(post, queued, settings, video_file):
    first = post("/api/videos/", {"file": upload(video_file)})
    again = post("/api/videos/", {"file": upload(video_file, "renamed.mp4")})
    assert again.status_code == 409 and again.json()["id"] == first.json()["id"]
    assert "already uploaded" in again.json()["detail"]
    assert MicroVideo.objects.count() == 1 and queued == [("video", first.json()["id"])]
    assert len([f for f in Path(settings.MEDIA_ROOT).rglob("*") if f.is_file()]) == 1  # the first upload only


def test_users_see_only_their_own(api, queued, video_file):
    api.post("/api/videos/", {"file": upload(video_file)}, format="multipart")
    other = APIClient()
    from django.contrib.auth.models import Group
    publisher = get_user_model().objects.create_user("other")
    publisher.groups.add(Group.objects.get(name="publisher"))
    other.force_authenticate(publisher)
    assert other.get("/api/videos/").json()["count"] == 0


def test_openapi_schema_lists_endpoints(api):
    r = api.get("/api/schema/")
    assert r.status_code == 200
    text = r.content.decode()
    assert "/api/videos/{id}/suggestions/" in text and "/api/products/{id}/videos/" in text


def test_text_search_needs_a_query_and_a_model_that_can_serve_it(api, monkeypatch):
    from types import SimpleNamespace

    from matching import services
    from matching.models import ModelVersion

    assert api.get("/api/search/", {"q": " "}).status_code == 400
    assert api.get("/api/search/", {"q": "red bag"}).status_code == 503  # no active model
    ModelVersion.objects.create(name="old", bundle_path="/nowhere", embed_dim=8, is_active=True)
    monkeypatch.setattr(services, "get_bundle", lambda version: SimpleNamespace(text_query=None))
    r = api.get("/api/search/", {"q": "red bag"})
    assert r.status_code == 503 and "no text query head" in r.json()["detail"]
