"""Who may do what: the README's table, walked for every endpoint, role and ownership case, and what each
role sees of other people's videos and products (lookups, text search, files).

Real database, real milvus-lite index (vectors written straight into it), real files; only the text
query encoder is a stand-in for search (building a model here would take minutes)."""
from types import SimpleNamespace

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from catalog.models import Category, Product, ProductImage
from matching import services
from matching.indexing import IndexState
from matching.models import Keyframe, Match, MatchDecision, MicroVideo, ModelVersion
from ml.serving.bundle import Embedded
from mvmatch.roles import MERCHANT, PUBLISHER, REVIEWER, is_merchant, is_publisher, is_reviewer
from tests.test_api import png, upload

pytestmark = pytest.mark.django_db

ROLES = ["anon", "norole", "merchant", "merchant2", "publisher", "publisher2", "reviewer", "superuser"]
DIM = 8

# The README's "Who may do what" table. Each row: endpoint, then the status per role; "merchant" owns
# the product and "publisher" the video the row names ({product}, {video}: private, {published}: published).
# A `fresh` row acts on a new object of the same owner (it edits or deletes it).
_OWN_PRODUCT = dict(anon=401, norole=403, merchant=200, merchant2=404, publisher=403, publisher2=403, reviewer=200,
                    superuser=200)
_CHANGE_PRODUCT = {**_OWN_PRODUCT, "reviewer": 403}
_OWN_VIDEO = dict(anon=401, norole=403, merchant=403, merchant2=403, publisher=200, publisher2=404, reviewer=200,
                  superuser=200)
_CHANGE_VIDEO = {**_OWN_VIDEO, "reviewer": 403}
_PRIVATE_FILE = dict(anon=403, norole=404, merchant=404, merchant2=404, publisher=200, publisher2=404, reviewer=200,
                     superuser=200)
TABLE = [
    # name,                  method,  path,                              fresh, expected
    ("categories",           "GET",    "/api/categories/",                 False, dict(anon=401, default=200)),
    ("schema",               "GET",    "/api/schema/",                     False, dict(anon=401, default=200)),
    ("list products",        "GET",    "/api/products/",                   False,
     dict(anon=401, norole=403, publisher=403, publisher2=403, default=200)),
    ("create product",       "POST",   "/api/products/",                   False,
     dict(anon=401, merchant=201, merchant2=201, superuser=201, default=403)),
    ("read product",         "GET",    "/api/products/{product}/",         False, _OWN_PRODUCT),
    ("edit product",         "PATCH",  "/api/products/{product}/",         True, _CHANGE_PRODUCT),
    ("delete product",       "DELETE", "/api/products/{product}/",         True,
     {**_CHANGE_PRODUCT, "merchant": 204, "superuser": 204}),
    ("videos for a product", "GET",    "/api/products/{product}/videos/",  False, _OWN_PRODUCT),
    ("recompute product",    "POST",   "/api/products/{product}/recompute/", False, _CHANGE_PRODUCT),
    ("list videos",          "GET",    "/api/videos/",                     False,
     dict(anon=401, norole=403, merchant=403, merchant2=403, default=200)),
    ("upload video",         "POST",   "/api/videos/",                     False,
     dict(anon=401, publisher=202, publisher2=202, superuser=202, default=403)),
    ("read video",           "GET",    "/api/videos/{video}/",             False, _OWN_VIDEO),
    ("publish video",        "PATCH",  "/api/videos/{video}/",             True, _CHANGE_VIDEO),
    ("delete video",         "DELETE", "/api/videos/{video}/",             True,
     {**_CHANGE_VIDEO, "publisher": 204, "superuser": 204}),
    ("suggestions",          "GET",    "/api/videos/{video}/suggestions/", False, _OWN_VIDEO),
    ("recompute video",      "POST",   "/api/videos/{video}/recompute/",   False, _CHANGE_VIDEO),
    ("text search",          "GET",    "/api/search/?q=bag",               False, dict(anon=401, norole=403, default=200)),
    ("private video file",   "GET",    "/files/videos/{video}/",           False, _PRIVATE_FILE),
    ("private keyframe",     "GET",    "/files/keyframes/{keyframe}/",     False, _PRIVATE_FILE),
    ("published video file", "GET",    "/files/videos/{published}/",       False, dict(anon=403, norole=404, default=200)),
    ("published keyframe",   "GET",    "/files/keyframes/{published_keyframe}/", False,
     dict(anon=403, norole=404, default=200)),
    ("product photo",        "GET",    "/files/photos/{photo}/",           False,
     dict(anon=403, norole=404, merchant2=404, default=200)),
]


def expected_status(expected: dict, role: str) -> int:
    return expected.get(role, expected.get("default"))


def make_user(name: str, *groups: str, **flags):
    user = get_user_model().objects.create_user(name, **flags)  # no password: hashing one is slow
    user.groups.add(*Group.objects.filter(name__in=groups))
    return user


class World:
    """Two merchants, two publishers, a reviewer (staff), a superuser and a user without a role; products and
    videos indexed under one model version, one video of each publisher private and one published."""

    def __init__(self, settings):
        self.users = {
            "norole": make_user("norole"),
            "merchant": make_user("merchant", MERCHANT), "merchant2": make_user("merchant2", MERCHANT),
            "publisher": make_user("publisher", PUBLISHER), "publisher2": make_user("publisher2", PUBLISHER),
            "reviewer": make_user("reviewer", REVIEWER, is_staff=True),
            "superuser": get_user_model().objects.create_superuser("root", password=None),
        }
        self.version = ModelVersion.objects.create(name="roles", bundle_path="/nowhere", embed_dim=DIM, is_active=True)
        self.category = Category.objects.get(path="clothes/bags/backpack")
        self.products = {who: self.product(who) for who in ("merchant", "merchant2")}
        self.videos = {(who, published): self.video(who, published, f"secret caption of {who} {published}")
                       for who in ("publisher", "publisher2") for published in (False, True)}

    def index(self) -> "World":
        """Their vectors into the index (milvus-lite starts: only for the tests that look things up)."""
        rng = np.random.default_rng(0)
        services.product_index(self.version).upsert(
            [p.pk for p in self.products.values()], rng.normal(size=(2, DIM)),
            *([i, i] for i in services.category_ids(self.category)))
        services.video_index(self.version).upsert(
            [v.pk for v in self.videos.values()], rng.normal(size=(4, DIM)),
            *([i] * 4 for i in services.category_ids(self.category)))
        return self

    def product(self, merchant: str, indexed: bool = True) -> Product:
        product = Product.objects.create(merchant=self.users[merchant], title=f"{merchant}'s bag", price=10,
                                         category=self.category,
                                         **(dict(status=IndexState.INDEXED, model_version=self.version) if indexed else {}))
        image = ProductImage(product=product)
        image.image.save("p.png", ContentFile(png().read()), save=False)
        image.save()
        return product

    def video(self, publisher: str, published: bool, caption: str = "", indexed: bool = True) -> MicroVideo:
        video = MicroVideo(publisher=self.users[publisher], caption=caption, published=published,
                           sha256=f"{publisher}{published}{MicroVideo.objects.count()}".ljust(64, "0"),
                           **(dict(status=IndexState.INDEXED, model_version=self.version) if indexed else {}))
        video.file.save("clip.mp4", ContentFile(b"not really a video"), save=False)
        video.save()
        keyframe = Keyframe(video=video, position=0, timestamp=0.0)
        keyframe.image.save("k.jpg", ContentFile(png().read()), save=False)
        keyframe.save()
        return video

    def client(self, role: str) -> APIClient:
        client = APIClient()
        if role != "anon":
            client.force_authenticate(self.users[role])
        return client

    def path(self, template: str, fresh: bool) -> str:
        product = self.product("merchant", indexed=False) if fresh else self.products["merchant"]
        video = self.video("publisher", False, indexed=False) if fresh else self.videos[("publisher", False)]
        published = self.videos[("publisher", True)]
        return template.format(product=product.pk, video=video.pk, keyframe=video.keyframes.get().pk,
                               published=published.pk, published_keyframe=published.keyframes.get().pk,
                               photo=product.images.get().pk)


@pytest.fixture
def world(settings, monkeypatch):
    stand_in = SimpleNamespace(  # the text query encoder: a fixed unit vector for any query
        text_query=True, two_stage=None,
        embed_text_query=lambda query, detail=True: Embedded(np.eye(DIM, dtype=np.float32)[:1], None))
    monkeypatch.setattr(services, "get_bundle", lambda version: stand_in)
    return World(settings)


@pytest.fixture
def indexed(world):
    return world.index()


def _request(world: World, role: str, method: str, path: str, video_file):
    client = world.client(role)
    if method == "POST" and path == "/api/products/":
        return client.post(path, {"title": "new bag", "price": "3", "category": "clothes/bags/backpack",
                                  "photos": [png()]}, format="multipart")
    if method == "POST" and path == "/api/videos/":
        return client.post(path, {"file": upload(video_file), "caption": role}, format="multipart")
    if method == "PATCH":
        body = {"published": True} if path.startswith("/api/videos/") else {"title": "renamed"}
        return client.patch(path, body, format="json")
    return getattr(client, method.lower())(path)


def test_every_endpoint_checks_role_and_ownership(indexed, video_file):
    """The whole table: every (endpoint, role) answers exactly the status the README promises."""
    world, wrong = indexed, []
    for name, method, template, fresh, expected in TABLE:
        for role in ROLES:
            path = world.path(template, fresh)
            got = _request(world, role, method, path, video_file).status_code
            if got != expected_status(expected, role):
                wrong.append(f"{name} ({method} {path}) as {role}: {got}, table says {expected_status(expected, role)}")
    assert not wrong, "\n".join(wrong)


def test_predicates_follow_groups_and_superusers(world):
    users = world.users
    assert [is_merchant(users[r]) for r in ("merchant", "publisher", "reviewer", "norole", "superuser")] == \
        [True, False, False, False, True]
    assert [is_publisher(users[r]) for r in ("merchant", "publisher", "reviewer", "norole", "superuser")] == \
        [False, True, False, False, True]
    assert [is_reviewer(users[r]) for r in ("merchant", "publisher", "reviewer", "norole", "superuser")] == \
        [False, False, True, False, True]
    both = make_user("both", MERCHANT, PUBLISHER)
    assert is_merchant(both) and is_publisher(both) and not is_reviewer(both)


def _ids(hits, key):
    return {hit[key]["id"] for hit in hits}


def test_merchants_see_own_and_published_videos_only(indexed):
    world = indexed
    v = world.videos
    product = world.products["merchant"]
    hits = world.client("merchant").get(f"/api/products/{product.pk}/videos/").json()
    assert _ids(hits, "video") == {v[("publisher", True)].pk, v[("publisher2", True)].pk}
    staff_hits = world.client("reviewer").get(f"/api/products/{product.pk}/videos/").json()
    assert _ids(staff_hits, "video") == {video.pk for video in v.values()}


def test_text_search_shows_each_role_what_it_may_see_and_no_private_caption(indexed):
    world = indexed
    v, p = world.videos, world.products
    published = {v[("publisher", True)].pk, v[("publisher2", True)].pk}
    expectations = {  # role: (video ids, product ids)
        "merchant": (published, {p["merchant"].pk}),
        "publisher2": (published | {v[("publisher2", False)].pk}, {p["merchant"].pk, p["merchant2"].pk}),
        "reviewer": ({video.pk for video in v.values()}, {p["merchant"].pk, p["merchant2"].pk}),
    }
    for role, (videos, products) in expectations.items():
        r = world.client(role).get("/api/search/", {"q": "bag", "k": 10})
        assert r.status_code == 200, r.content
        body = r.json()
        assert (_ids(body["videos"], "video"), _ids(body["products"], "product")) == (videos, products), role
    text = world.client("merchant").get("/api/search/", {"q": "bag", "k": 10}).content.decode()
    assert "secret caption of publisher False" not in text and "secret caption of publisher2 False" not in text


def test_publishing_makes_a_video_visible_to_merchants(world):
    private = world.videos[("publisher", False)]
    merchant = world.client("merchant")
    assert merchant.get(f"/files/videos/{private.pk}/").status_code == 404
    r = world.client("publisher").patch(f"/api/videos/{private.pk}/", {"published": True, "caption": "changed"},
                                        format="json")
    assert r.status_code == 200 and r.json()["published"] is True
    private.refresh_from_db()
    assert private.published and private.caption.startswith("secret")  # only the flag changes
    assert merchant.get(f"/files/videos/{private.pk}/").status_code == 200


def test_serializers_link_files_through_the_permission_checked_view(world):
    body = world.client("merchant").get(f"/api/products/{world.products['merchant'].pk}/").json()
    assert "/files/photos/" in body["images"][0]["image"] and "/media/" not in str(body)
    video = world.client("publisher").get(f"/api/videos/{world.videos[('publisher', False)].pk}/").json()
    assert "/files/videos/" in video["file"] and "/files/keyframes/" in video["keyframes"][0]["image"]
    assert world.client("anon").get("/media/" + world.videos[("publisher", False)].file.name).status_code == 404


def test_roles_hold_the_permissions_the_migration_gave_them():
    reviewer = Group.objects.get(name=REVIEWER)
    assert reviewer.permissions.filter(codename="change_match").exists()
    assert not Group.objects.get(name=PUBLISHER).permissions.filter(codename="change_match").exists()
    assert Group.objects.get(name=MERCHANT).permissions.filter(codename="add_product").exists()


# --- admin --------------------------------------------------------------------------------

@pytest.fixture
def match(world):
    return Match.objects.create(video=world.videos[("publisher", False)], product=world.products["merchant"],
                                direction="v2p", score=0.5, rank=1, model_version=world.version)


def _staff(client, name: str, *perms: str):
    user = get_user_model().objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
    client.force_login(user)
    return user


def test_view_only_staff_is_not_offered_and_cannot_use_the_decision_actions(client, match, world):
    client.force_login(world.users["merchant"])  # not staff: the admin asks for a staff login
    assert client.get("/admin/matching/match/")["Location"].startswith("/admin/login/")
    viewer = _staff(client, "viewer", "view_match")
    page = client.get("/admin/matching/match/").content.decode()
    assert 'value="approve"' not in page and 'value="reject"' not in page
    r = client.post("/admin/matching/match/", {"action": "approve", "_selected_action": [match.pk]})
    assert r.status_code in (200, 302)
    match.refresh_from_db()
    assert match.status == "pending" and match.reviewed_by is None and not MatchDecision.objects.exists()
    with pytest.raises(PermissionDenied):  # the service checks too, whoever calls it
        services.review(Match.objects.filter(pk=match.pk), viewer, Match.Review.APPROVED)


def test_reviewer_decisions_are_audited_and_shown(client, match, world):
    reviewer = world.users["reviewer"]
    client.force_login(reviewer)
    page = client.get("/admin/matching/match/").content.decode()
    assert 'value="approve"' in page and 'value="reject"' in page
    client.post("/admin/matching/match/", {"action": "approve", "_selected_action": [match.pk]})
    client.post("/admin/matching/match/", {"action": "reject", "_selected_action": [match.pk]})
    decisions = list(MatchDecision.objects.filter(match=match).order_by("id").values_list("username", "before", "after"))
    assert decisions == [("reviewer", "pending", "approved"), ("reviewer", "approved", "rejected")]
    match.refresh_from_db()
    assert match.status == "rejected" and match.reviewed_by == reviewer
    detail = client.get(f"/admin/matching/match/{match.pk}/change/").content.decode()
    assert detail.count("reviewer") >= 2 and "Approved" in detail and "Rejected" in detail
    audit = client.get("/admin/matching/matchdecision/").content.decode()
    assert audit.count("<tr") >= 3  # header + two decisions
