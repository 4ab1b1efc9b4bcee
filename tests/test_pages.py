"""The pages for publishers, merchants and reviewers, in real Chromium against the live stack
(web server + Celery worker + milvus-lite server), with a small model trained by our own code.

The tests also write the screenshots in docs/screenshots/ (desktop and phone width).
"""
from __future__ import annotations

import json
import re

import pytest

from matching.vector_index import MilvusLiteServer
from ml.datagen import SIZES, generate_dataset
from tests.browser import chromium, drop_file, screenshot, signed_in  # noqa: F401 (chromium is a fixture)
from tests.stack import Stack

pytestmark = pytest.mark.slow

PASSWORD = "pages-test-password"
USERS = {  # username -> roles
    "pub1": ["publisher"], "pub2": ["publisher"], "shop1": ["merchant"], "shop2": ["merchant"],
    "rev1": ["reviewer"],
}
LISTED_PRODUCTS = 8  # shop1's products before the merchant test adds one


class Site:
    """The running stack, the generated catalogue, and what the fixture put in it."""

    def __init__(self, stack: Stack, catalogue, new_product, published_video: int, private_video: int):
        self.stack, self.catalogue, self.new_product = stack, catalogue, new_product
        self.published_video, self.private_video = published_video, private_video

    def db(self, code: str):
        """A value computed in the stack's database (printed as JSON by `manage.py shell`)."""
        return json.loads(self.stack.shell(f"import json\n{code}"))


@pytest.fixture(scope="module")
def site(tmp_path_factory, bundle):
    """Users of each role; LISTED_PRODUCTS catalogue products added by shop1 through the API (the next one
    is left for the merchant test); two videos of pub2 through the API, the first one published."""
    tmp = tmp_path_factory.mktemp("pages")
    catalogue = generate_dataset(tmp / "data", SIZES["tiny"], seed=0, progress=False)
    with MilvusLiteServer(tmp / "milvus") as milvus_uri:
        stack = Stack(tmp, milvus_uri=milvus_uri).start(bundle)
        try:
            stack.shell(
                "from django.contrib.auth.models import Group, User\n"
                f"for name, roles in {USERS!r}.items():\n"
                f"    u = User.objects.create_user(name, password={PASSWORD!r}, is_staff=name.startswith('rev'))\n"
                "    u.groups.set(Group.objects.filter(name__in=roles))")
            stack.login("shop1")
            *listed, new_product = catalogue.products[:LISTED_PRODUCTS + 1]
            ids = [stack.create_product(catalogue, p)["id"] for p in listed]
            stack.login("pub2")
            videos = []
            for v in catalogue.videos_in("test"):
                r = stack.upload_video(catalogue.root / v.file, v.caption)
                assert r.status_code == 202, r.text
                videos.append(r.json()["id"])
            stack.login("shop1")
            for pk in ids:
                assert stack.wait_status(f"/api/products/{pk}/")["status"] == "indexed"
            stack.login("pub2")
            for pk in videos:
                assert stack.wait_status(f"/api/videos/{pk}/")["status"] == "indexed"
            published = stack.session.patch(f"{stack.base}/api/videos/{videos[0]}/", json={"published": True})
            assert published.status_code == 200 and published.json()["published"], published.text
            # The web process loads the model at its first lookup; do it here, not inside a page's timeout.
            assert stack.get(f"/api/videos/{videos[0]}/suggestions/").status_code == 200
            yield Site(stack, catalogue, new_product, videos[0], videos[1])
        finally:
            stack.stop()


def test_publisher_uploads_by_drag_and_drop_and_sees_where_to_place_products(site, chromium):
    context, page = signed_in(chromium, site.stack.base, "pub1", PASSWORD)
    assert page.url.endswith("/publisher/")
    clip = site.catalogue.videos_in("test")[0]
    page.evaluate("window.notReloaded = true")
    drop_file(page, ".dropzone", site.catalogue.root / clip.file, "video/mp4")
    assert clip.file.rsplit("/", 1)[-1] in page.inner_text("[data-chosen]")
    page.fill("#id_caption", clip.caption)
    page.click("form[data-upload] button[type=submit]")
    # The new row arrives with the upload's answer, then follows the worker by polling: no reload.
    page.wait_for_selector("#video-list li[data-status=queued], #video-list li[data-status=processing]")
    row = page.wait_for_selector("#video-list li[data-status=indexed]", timeout=120_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.inner_text("[data-upload-message]").startswith("Uploaded")
    screenshot(page, "publisher-videos")
    video_id = int(row.get_attribute("id").removeprefix("video-"))

    row.query_selector("a").click()
    page.wait_for_selector(".hit")
    page.wait_for_function("document.querySelector('#player').readyState >= 1")
    # The player seeks because the file view answers byte ranges (RFC 9110), as a front web server would.
    source = page.get_attribute("#player", "src")
    whole = page.request.get(source).body()
    part = page.request.get(source, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.body() == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert page.request.get(source, headers={"Range": "bytes=-10"}).body() == whole[-10:]
    assert page.request.get(source, headers={"Range": f"bytes={len(whole)}-"}).status == 416
    hits = page.query_selector_all(".hit")
    assert len(hits) == LISTED_PRODUCTS  # all of them: fewer than MVMATCH_SUGGESTIONS
    for hit in hits:
        text = hit.inner_text()
        assert hit.query_selector("img.photo") and "shop1" in text and re.search(r"score -?\d\.\d{3}", text)
        assert re.search(r"\d+\.\d{2}", hit.inner_text())  # the price
        assert re.search(r"Place it at \d+\.\d s", hit.query_selector(".moment").inner_text())
    # The moment that drove the first match: a click seeks the player there.
    moment = hits[0].query_selector(".moment")
    seek_to = float(moment.get_attribute("data-seek"))
    moment.click()
    assert page.evaluate("document.querySelector('#player').currentTime") == pytest.approx(seek_to, abs=0.05)
    # It is the keyframe the match row records.
    product_id = int(hits[0].get_attribute("data-product"))
    recorded = site.db("from matching.models import Keyframe, Match\n"
                       f"m = Match.objects.get(video={video_id}, product={product_id}, direction='v2p')\n"
                       f"print(json.dumps(Keyframe.objects.get(video={video_id}, position=m.frame_position).timestamp))")
    assert seek_to == pytest.approx(recorded, abs=0.001)
    screenshot(page, "publisher-video")

    # Category filter: only products of that subtree remain.
    middle = hits[0].get_attribute("data-category").rsplit("/", 1)[0]
    with page.expect_response(re.compile(r"/suggestions/\?category=")):
        page.select_option("#suggestion-category", middle)
    page.wait_for_function(f"document.querySelectorAll('.hit').length < {LISTED_PRODUCTS}")  # swapped in
    categories = [h.get_attribute("data-category") for h in page.query_selector_all(".hit")]
    assert categories and all(c.startswith(middle + "/") for c in categories)
    assert len(categories) < LISTED_PRODUCTS

    # Publish, unpublish, delete.
    page.click("text=Publish")
    page.wait_for_selector("text=Unpublish")
    assert site.db(f"from matching.models import MicroVideo; print(json.dumps(MicroVideo.objects.get(pk={video_id}).published))")
    page.click("text=Unpublish")
    page.wait_for_selector("button:text-is('Publish')")
    assert not site.db(f"from matching.models import MicroVideo; print(json.dumps(MicroVideo.objects.get(pk={video_id}).published))")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:text-is('Delete')")
    page.wait_for_url(re.compile(r"/publisher/$"))
    assert site.db(f"from matching.models import MicroVideo; print(json.dumps(MicroVideo.objects.filter(pk={video_id}).count()))") == 0
    context.close()


def test_merchant_adds_a_product_and_sees_which_published_videos_it_fits(site, chromium):
    context, page = signed_in(chromium, site.stack.base, "shop1", PASSWORD)
    assert page.url.endswith("/merchant/")
    assert len(page.query_selector_all("#product-list li[data-status=indexed]")) == LISTED_PRODUCTS
    screenshot(page, "merchant-products")
    product = site.new_product
    page.click("text=Add a product")
    page.fill("#id_title", product.title)
    page.fill("#id_description", product.description)
    page.fill("#id_price", f"{product.price:.2f}")
    # Search-as-you-type over the ontology: a few letters of the category's name.
    name = product.category_path.rsplit("/", 1)[-1].replace("-", " ")
    page.type("#product-category-search", name[:5], delay=40)
    option = page.wait_for_selector(f"[data-category-path='{product.category_path}']")
    option.click()
    assert page.input_value("#product-category-search") == product.category_path
    photos = [str(site.catalogue.root / rel) for rel in product.images]
    page.set_input_files("#id_photos", photos)
    page.wait_for_function(f"document.querySelectorAll('#photo-previews img').length === {len(photos)}")
    screenshot(page, "merchant-product-form")
    page.click("#product-form button[type=submit]")
    page.wait_for_url(re.compile(r"/merchant/products/\d+/$"))
    product_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    # The page follows the worker and shows the placements once the product is indexed.
    page.wait_for_selector("#placements", timeout=120_000)
    stored = site.db(f"from catalog.models import Product; p = Product.objects.get(pk={product_id})\n"
                     "print(json.dumps([p.title, p.category.path, p.images.count(), p.merchant.username]))")
    assert stored == [product.title, product.category_path, len(photos), "shop1"]
    placed = [int(li.get_attribute("data-video")) for li in page.query_selector_all("#placements li[data-video]")]
    assert placed == [site.published_video]  # the private video never shows
    assert re.search(r"moment \d+\.\d s", page.inner_text("#placements"))
    screenshot(page, "merchant-product")
    context.close()


def test_reviewer_clears_ten_matches_by_keyboard(site, chromium):
    context, page = signed_in(chromium, site.stack.base, "rev1", PASSWORD)
    assert page.url.endswith("/review/")
    screenshot(page, "review-queue")
    pending_before = site.db("from matching.models import Match; print(json.dumps(Match.objects.filter(status='pending').count()))")
    assert pending_before >= 12

    def current() -> int:
        return int(page.get_attribute("#review-card", "data-match"))

    def press(key: str) -> int:
        before = current()
        page.keyboard.press(key)
        page.wait_for_function(f"document.querySelector('#review-card').dataset.match !== '{before}'")
        return before

    decided = {}
    skipped = press("s")
    for key in "ararararar":
        decided[press(key)] = "approved" if key == "a" else "rejected"
    # Undo takes back the last decision and shows that match again.
    last = list(decided)[-1]
    page.keyboard.press("u")
    page.wait_for_function(f"document.querySelector('#review-card').dataset.match === '{last}'")
    assert site.db(f"from matching.models import Match; print(json.dumps(Match.objects.get(pk={last}).status))") == "pending"
    decided[press("a")] = "approved"

    after = site.db(
        "from matching.models import Match, MatchDecision, ModelVersion\n"
        "pending = Match.objects.filter(status='pending')\n"
        "print(json.dumps({'rows': {m.pk: [m.status, m.reviewed_by.username] for m in "
        f"Match.objects.filter(pk__in={list(decided)})}}, 'skipped': Match.objects.get(pk={skipped}).status, "
        "'audit': [[d.match_id, d.before, d.after] for d in MatchDecision.objects.filter(username='rev1').order_by('id')], "
        "'scores': sorted(pending.values_list('score', flat=True)), 'version': ModelVersion.objects.get().pk}))")
    assert {int(k): v for k, v in after["rows"].items()} == {pk: [status, "rev1"] for pk, status in decided.items()}
    assert after["skipped"] == "pending"
    # The audit has every step, the undo included.
    assert len(after["audit"]) == 12 and [step for step in after["audit"] if step[0] == last] == [
        [last, "pending", "rejected"], [last, "rejected", "pending"], [last, "pending", "approved"]]
    scores = after["scores"]
    assert len(scores) == pending_before - 10

    # Filters: a score range and the model version narrow the queue.
    low, version = scores[len(scores) // 2], after["version"]
    page.goto(f"/review/?min_score={low}&model_version={version}")
    assert int(page.get_attribute("#review-card", "data-left")) == sum(s >= low for s in scores)
    shown = float(page.inner_text("#review-card .score strong"))
    assert shown >= round(low, 3)
    context.close()


def test_each_role_reaches_only_its_pages_and_its_own_items(site, chromium):
    anonymous = chromium.new_context(base_url=site.stack.base)
    page = anonymous.new_page()
    for url in ("/publisher/", "/merchant/", "/review/", "/search/?q=bag"):
        page.goto(url)
        assert "/accounts/login/" in page.url, url
    anonymous.close()

    other_video = site.private_video
    other_product = site.db("from catalog.models import Product; print(json.dumps(Product.objects.filter(merchant__username='shop1').first().pk))")
    forbidden = {"pub1": ["/merchant/", "/review/", f"/merchant/products/{other_product}/"],
                 "shop2": ["/publisher/", "/review/", f"/publisher/videos/{other_video}/"],
                 "rev1": ["/publisher/", "/merchant/"]}
    for user, urls in forbidden.items():
        context, page = signed_in(chromium, site.stack.base, user, PASSWORD)
        for url in urls:
            assert page.goto(url).status == 403, (user, url)
        context.close()

    # Someone else's items are 404 to a user of the right role, for reading and for changing.
    context, page = signed_in(chromium, site.stack.base, "pub1", PASSWORD)
    for url in ("/publisher/videos/{}/", "/publisher/videos/{}/row/", "/publisher/videos/{}/suggestions/"):
        assert page.goto(url.format(other_video)).status == 404, url
    page.goto("/publisher/")
    status = page.evaluate("""async (url) => (await fetch(url, {method: "POST",
        headers: {"X-CSRFToken": document.querySelector("input[name=csrfmiddlewaretoken]").value}})).status""",
                           f"/publisher/videos/{other_video}/delete/")
    assert status == 404
    assert site.db(f"from matching.models import MicroVideo; print(json.dumps(MicroVideo.objects.filter(pk={other_video}).count()))") == 1
    context.close()
    context, page = signed_in(chromium, site.stack.base, "shop2", PASSWORD)
    for url in ("/merchant/products/{}/", "/merchant/products/{}/edit/", "/merchant/products/{}/row/"):
        assert page.goto(url.format(other_product)).status == 404, url
    context.close()


def test_search_shows_only_what_the_user_may_see(site, chromium):
    private_caption, published_caption = site.db(
        "from matching.models import MicroVideo\n"
        f"print(json.dumps([MicroVideo.objects.get(pk={site.private_video}).caption, "
        f"MicroVideo.objects.get(pk={site.published_video}).caption]))")
    query = site.catalogue.product(site.catalogue.videos_in("test")[1].product_sku).title
    for user, sees_private in (("shop2", False), ("pub1", False), ("pub2", True)):
        context, page = signed_in(chromium, site.stack.base, user, PASSWORD)
        page.fill("header input[name=q]", query)
        page.keyboard.press("Enter")
        page.wait_for_selector("#search-products li")
        videos = page.inner_text("#search-videos")
        assert (private_caption[:40] in videos) is sees_private, user
        assert published_caption[:40] in videos, user
        if user == "pub1":  # a publisher sees every product (as suggestions) and the published videos
            screenshot(page, "search")
        context.close()


def test_bad_input_on_a_page_is_a_400_with_the_reason_and_changes_nothing(site, chromium, tmp_path):
    counts = ("from catalog.models import Product; from matching.models import Match, MicroVideo\n"
              "print(json.dumps([Product.objects.count(), MicroVideo.objects.count(), "
              "list(Match.objects.order_by('pk').values_list('status', flat=True))]))")
    before = site.db(counts)
    context, page = signed_in(chromium, site.stack.base, "pub2", PASSWORD)
    video = site.published_video
    for url in (f"/publisher/videos/{video}/?category=no-such-thing",
                f"/publisher/videos/{video}/suggestions/?category=99999999999999999999",
                "/search/?q=bag&category=nowhere/at/all"):
        response = page.request.get(url)
        assert response.status == 400 and "unknown category" in response.text(), url
    token = page.input_value("input[name=csrfmiddlewaretoken]")
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_bytes(b"these are not video frames" * 100)
    upload = page.request.post("/publisher/upload/", headers={"X-CSRFToken": token}, multipart={
        "file": {"name": not_a_video.name, "mimeType": "video/mp4", "buffer": not_a_video.read_bytes()},
        "caption": "x"})
    assert upload.status == 400 and upload.text().startswith("file:"), upload.text()
    too_long = page.request.post("/publisher/upload/", headers={"X-CSRFToken": token}, multipart={
        "file": {"name": "a.mp4", "mimeType": "video/mp4", "buffer": (site.catalogue.root / site.catalogue.videos_in("test")[0].file).read_bytes()},
        "caption": "x" * 5000})
    assert too_long.status == 400 and "caption" in too_long.text()
    context.close()

    context, page = signed_in(chromium, site.stack.base, "rev1", PASSWORD)
    for query in ("min_score=abc", "max_score=nan", "category=999999", "model_version=abc"):
        assert page.request.get(f"/review/?{query}").status == 400, query
    token = page.input_value("input[name=csrfmiddlewaretoken]")
    match = site.db("from matching.models import Match; print(json.dumps(Match.objects.filter(status='pending').first().pk))")
    for action in ("", "approve-all", "delete"):
        response = page.request.post(f"/review/{match}/decide/", headers={"X-CSRFToken": token}, form={"action": action})
        assert response.status == 400, action
    # Without the CSRF token a decision is refused.
    assert page.request.post(f"/review/{match}/decide/", form={"action": "approve"}).status == 403
    context.close()

    context, page = signed_in(chromium, site.stack.base, "shop1", PASSWORD)
    page.goto("/merchant/products/new/")
    page.fill("#id_title", "Free lunch")
    page.fill("#id_price", "-3")
    page.eval_on_selector("input[name=category]", "input => input.value = '99999999999999999999'")
    page.set_input_files("#id_photos", [str(site.catalogue.root / site.new_product.images[0])])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#product-form button[type=submit]")
    assert answer.value.status == 400
    reasons = page.inner_text("#product-form")
    assert "unknown category id" in reasons and "greater than or equal to 0" in reasons  # next to their fields
    assert page.input_value("#id_title") == "Free lunch"  # what was typed is kept
    context.close()
    assert site.db(counts) == before
