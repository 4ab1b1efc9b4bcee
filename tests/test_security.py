"""Safe by default: production settings, no 500 for bad input, bounded photo decoding, private media
offload, and on a live server: rate limits (429), oversized uploads refused from Content-Length, no
debug pages."""
import io
import os
import secrets
import socket
import subprocess
import sys

import numpy as np
import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from catalog.photos import PhotoError, decode_photo
from tests.live_api import start_api
from tests.stack import ROOT

HUGE = "99999999999999999999"


def _django(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` after django.setup() in a fresh process whose environment has only what production sets."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MVMATCH_"))}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "mvmatch.settings", **env},
                          capture_output=True, text=True, timeout=120)


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MVMATCH_"))}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


# --- settings -------------------------------------------------------------------------------

def test_without_a_secret_key_production_settings_refuse_to_start():
    refused = _django("print('started')")
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY is not set" in refused.stderr
    debug = _django("from django.conf import settings; print(settings.DEBUG)", MVMATCH_DEBUG="1")
    assert debug.returncode == 0 and debug.stdout.strip() == "True"
    default = _django("from django.conf import settings; print(settings.DEBUG)", DJANGO_SECRET_KEY="k" * 60)
    assert default.returncode == 0 and default.stdout.strip() == "False"


def test_check_deploy_is_clean_in_the_production_configuration():
    key = secrets.token_urlsafe(50)
    production = _manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_SECRET_KEY=key, MVMATCH_HTTPS="1")
    assert production.returncode == 0 and "no issues" in production.stdout, production.stderr
    plain_http = _manage("check", "--deploy", DJANGO_SECRET_KEY=key)  # what serving over HTTPS adds
    assert {"security.W004", "security.W008", "security.W012", "security.W016"} <= {
        word.rstrip(":)") for word in plain_http.stderr.replace("(", " ").split() if word.startswith("security.")}


# --- bad input ------------------------------------------------------------------------------

@pytest.fixture
def merchant_publisher(db):
    user = get_user_model().objects.create_user("both")
    user.groups.add(*Group.objects.filter(name__in=["merchant", "publisher"]))
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.parametrize("path, field", [
    ("/api/categories/?parent=abc", "parent"),
    (f"/api/categories/?parent={HUGE}", "parent"),
    ("/api/categories/?parent=-1", "parent"),
    ("/api/categories/?level=giant", "level"),
    ("/api/search/?q=bag&k=abc", "k"),
    (f"/api/search/?q=bag&k={HUGE}", "k"),
    (f"/api/search/?q=bag&category={HUGE}", "category"),
    ("/api/search/?q=bag&category=%00", "category"),
    ("/api/search/?q=%00", "q"),
    ("/api/search/?q=" + "x" * 501, "q"),
])
def test_bad_query_parameters_get_a_400_naming_the_field(merchant_publisher, path, field):
    r = merchant_publisher.get(path)
    assert r.status_code == 400 and field in r.json(), (path, r.status_code, r.content[:300])


@pytest.mark.parametrize("path", [f"/api/products/{HUGE}/", f"/api/videos/{HUGE}/", f"/api/videos/{HUGE}/suggestions/",
                                  f"/api/categories/{HUGE}/", f"/files/videos/{HUGE}/", f"/files/photos/{HUGE}/",
                                  "/api/products/abc/", "/files/keyframes/-1/", f"/publisher/videos/{HUGE}/",
                                  f"/merchant/products/{HUGE}/"])
def test_ids_out_of_range_are_not_found(merchant_publisher, path):
    assert merchant_publisher.get(path).status_code == 404


def test_category_list_filters_still_work(merchant_publisher):
    uppers = merchant_publisher.get("/api/categories/?level=upper").json()
    assert uppers["count"] == 6 and {c["level"] for c in uppers["results"]} == {"upper"}
    first = uppers["results"][0]["id"]
    children = merchant_publisher.get(f"/api/categories/?parent={first}").json()["results"]
    assert children and all(c["parent"] == first for c in children)


# --- photos ---------------------------------------------------------------------------------

def _png(width: int, height: int, mode: str = "1") -> bytes:
    """A real PNG of that size; 1-bit pixels keep making it cheap."""
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_photo_over_the_pixel_limit_is_refused_before_decoding_with_its_size(merchant_publisher, settings):
    big = SimpleUploadedFile("huge.png", _png(12000, 12000), content_type="image/png")
    r = merchant_publisher.post("/api/products/", {"title": "bag", "price": "1", "category": "clothes/bags/backpack",
                                                   "photos": [big]}, format="multipart")
    assert r.status_code == 400
    assert "photo huge.png is 12000×12000 = 144 Mpx; the limit is 50 Mpx" in str(r.json()["photos"])
    bomb = SimpleUploadedFile("bomb.png", _png(15000, 15000), content_type="image/png")  # over Pillow's own limit
    r = merchant_publisher.post("/api/products/", {"title": "bag", "price": "1", "category": "clothes/bags/backpack",
                                                   "photos": [bomb]}, format="multipart")
    assert r.status_code == 400 and "the limit is 50 Mpx" in str(r.json()["photos"])


def test_decoding_reduces_at_once_and_checks_pixels_at_ingest_too(settings):
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(buf, format="JPEG")
    photo = decode_photo(io.BytesIO(buf.getvalue()))
    assert photo.shape == (341, 512, 3) and photo.dtype == np.uint8 and abs(int(photo[100, 100, 1]) - 200) < 8
    settings.MVMATCH_MAX_PHOTO_PIXELS = 1_000_000
    with pytest.raises(PhotoError, match=r"3000×2000 = 6 Mpx; the limit is 1 Mpx"):
        decode_photo(io.BytesIO(buf.getvalue()), name="photo")


# --- private media: offloaded to the web server ---------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("offload, header", [("nginx", "X-Accel-Redirect"), ("sendfile", "X-Sendfile")])
def test_permitted_files_can_be_handed_to_the_front_server(settings, offload, header):
    from matching.models import MicroVideo

    settings.MVMATCH_MEDIA_OFFLOAD = offload
    owner = get_user_model().objects.create_user("pub")
    owner.groups.add(Group.objects.get(name="publisher"))
    video = MicroVideo(publisher=owner, sha256="0" * 64)
    video.file.save("clip.mp4", ContentFile(b"video bytes"), save=False)
    video.save()
    client = APIClient()
    assert client.get(f"/files/videos/{video.pk}/").status_code == 403  # anonymous: no header, no file
    client.force_authenticate(owner)
    r = client.get(f"/files/videos/{video.pk}/")
    assert r.status_code == 200 and r.content == b"" and video.file.name in r[header]
    assert r["Content-Type"] == "video/mp4"


# --- live server ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    stack, tokens = start_api(tmp_path_factory.mktemp("security"), MVMATCH_THROTTLE_TOKEN="3/min",
                              MVMATCH_THROTTLE_UPLOAD="2/min", MVMATCH_THROTTLE_LOOKUP="3/min")
    yield stack, tokens
    stack.stop()


def _statuses(send, n: int) -> list[int]:
    return [send().status_code for _ in range(n)]


def test_throttles_answer_429_per_scope(live):
    stack, tokens = live
    token = lambda: requests.post(stack.base + "/api/auth/token/", data={"username": "merchant", "password": "bad"})
    statuses = _statuses(token, 4)
    assert statuses[:3] == [400, 400, 400] and statuses[3] == 429
    assert "Retry-After" in token().headers
    publisher = {"Authorization": f"Token {tokens['publisher']}"}
    upload = lambda: requests.post(stack.base + "/api/videos/", headers=publisher, files={"caption": (None, "x")})
    assert _statuses(upload, 3) == [400, 400, 429]
    merchant = {"Authorization": f"Token {tokens['merchant']}"}
    search = lambda: requests.get(stack.base + "/api/search/?q=bag", headers=merchant)
    assert _statuses(search, 4)[3] == 429
    # the scopes count per user: another role's lookups are not used up
    reviewer = {"Authorization": f"Token {tokens['reviewer']}"}
    assert requests.get(stack.base + "/api/search/?q=bag", headers=reviewer).status_code != 429


def test_oversized_upload_is_refused_from_its_content_length_before_the_body_is_sent(live):
    stack, tokens = live
    declared = 210 * 1024 * 1024
    head = (f"POST /api/videos/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {tokens['reviewer']}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {declared}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as conn:
        conn.sendall(head.encode() + b"--x\r\n")  # a few bytes of the 210 MB, then wait for the answer
        answer = ""
        while "}" not in answer:  # the whole answer, while the server still waits for the rest of the body
            chunk = conn.recv(65536).decode(errors="replace")
            if not chunk:
                break
            answer += chunk
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert f"request body is {declared} bytes; the limit is" in answer


def test_errors_show_no_debug_page(live):
    stack, tokens = live
    merchant = {"Authorization": f"Token {tokens['merchant']}"}
    r = requests.get(stack.base + "/no/such/page/", headers=merchant)
    assert r.status_code == 404 and "URLconf" not in r.text and "Traceback" not in r.text
    r = requests.get(stack.base + "/api/categories/?parent=abc", headers=merchant)
    assert r.status_code == 400 and "parent" in r.json()


def test_media_is_not_public_on_the_live_server(live):
    stack, tokens = live
    assert requests.get(stack.base + "/files/videos/1/").status_code == 403
    assert requests.get(stack.base + "/files/keyframes/1/").status_code == 403
    assert requests.get(stack.base + "/files/photos/1/").status_code == 403
    merchant = {"Authorization": f"Token {tokens['merchant']}"}
    assert requests.get(stack.base + "/files/videos/1/", headers=merchant).status_code == 404  # private video
    assert requests.get(stack.base + "/files/videos/2/", headers=merchant).content == b"bytes"  # published
    stored = stack.shell("from matching.models import MicroVideo; print(MicroVideo.objects.get(pk=1).file.name)")
    assert requests.get(f"{stack.base}/media/{stored}").status_code == 404
