"""The scale-out deployment of deploy/compose.yaml run for real, as processes on this machine: PostgreSQL,
the Redis broker and result store, a Milvus 2.3 standalone server (the `milvus` package), gunicorn, and
two Celery workers on separate queues: a CPU worker on the default queue and a "GPU" worker alone on the
ML queue (on CUDA where this machine has it). Everything a user does goes through HTTP: a merchant's
products and a publisher's videos through the API, a reviewer's decisions through the review page, a
re-index through the admin. The database and the index are read (manage.py shell) only to check.

Fails, never falls back, when PostgreSQL, Redis or the Milvus server does not come up.
"""
import json
import re
from collections import Counter

import pytest
import requests
import torch

from matching.bench_index import milvus_standalone
from tests.chance import assert_rank_sum_beats_chance
from tests.stack import Stack, rank_of, scale_out

pytestmark = pytest.mark.slow

# Not compose's "ml": ingest must go where the setting (MVMATCH_ML_QUEUE) says, not to a name in the code.
ML_QUEUE = "ml-scale-out"
CPU_WORKER, GPU_WORKER = "worker-cpu", "worker-gpu"
GPU_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PASSWORD = "scale-out-test-password"
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
RECEIVED = re.compile(r"Task ([\w.]+)\[[-\w]+\] received")  # Celery's line when a worker takes a task
INGESTED = re.compile(r"ingest (product|microvideo) (\d+): indexed in")  # matching.tasks' line per outcome


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """One Milvus standalone for the module: it takes a while to start."""
    with milvus_standalone(tmp_path_factory.mktemp("milvus-standalone"), startup_timeout=180) as uri:
        yield uri


@pytest.fixture
def deployment(tmp_path, bundle, milvus_server):
    """The stack installed, its users made, both workers and the web server started."""
    with scale_out() as servers:
        stack = Stack(tmp_path, milvus_uri=milvus_server, environment={"MVMATCH_ML_QUEUE": ML_QUEUE}, **servers)
        stack.web_start_timeout = 240  # three processes load the model at once here, on a shared machine
        try:
            stack.install(bundle)
            stack.tokens = json.loads(stack.shell(
                "import json; from django.contrib.auth import get_user_model; "
                "from django.contrib.auth.models import Group; from rest_framework.authtoken.models import Token\n"
                "User = get_user_model()\n"
                f"User.objects.create_superuser('admin', 'admin@example.com', '{PASSWORD}')\n"
                "tokens = {}\n"
                "for name in ('merchant', 'publisher', 'reviewer'):\n"
                f"    u = User.objects.create_user(name, password='{PASSWORD}')\n"
                "    u.groups.add(Group.objects.get(name=name))\n"
                "    tokens[name] = Token.objects.create(user=u).key\n"
                "print(json.dumps(tokens))"))
            stack.start_worker(CPU_WORKER, queues="celery", env={"MVMATCH_DEVICE": "cpu"})
            stack.start_worker(GPU_WORKER, queues=ML_QUEUE, env={"MVMATCH_DEVICE": GPU_DEVICE})
            stack.start_web()
            yield stack
        finally:
            stack.stop()


# --- users of the site --------------------------------------------------------------------------

def act_as(stack: Stack, role: str) -> None:
    """API calls of ``stack`` from now on are ``role``'s (token authentication)."""
    stack.session.headers["Authorization"] = f"Token {stack.tokens[role]}"


def signed_in(stack: Stack, login_path: str, username: str, landing: str) -> requests.Session:
    """A browser session signed in through a login form (the pages' or the admin's), CSRF included, that
    has landed on ``landing``."""
    browser = requests.Session()
    form = browser.get(stack.base + login_path, timeout=stack.request_timeout)
    signed = browser.post(stack.base + login_path, timeout=stack.request_timeout, data={
        "username": username, "password": PASSWORD, "csrfmiddlewaretoken": CSRF_FIELD.search(form.text)[1],
        "next": landing})
    assert signed.ok and signed.url == stack.base + landing and "sessionid" in browser.cookies, signed.text[-2000:]
    return browser


def admin_action(stack: Stack, admin: requests.Session, changelist: str, action: str, ids: list[int]) -> str:
    """Run an admin action on the selected rows as the changelist's form does; returns the page it leads to."""
    page = admin.get(stack.base + changelist, timeout=stack.request_timeout)
    assert page.status_code == 200, page.text[-2000:]
    done = admin.post(stack.base + changelist, timeout=stack.request_timeout, data={
        "csrfmiddlewaretoken": CSRF_FIELD.search(page.text)[1], "action": action, "select_across": "0",
        "index": "0", "_selected_action": [str(i) for i in ids]})
    assert done.status_code == 200 and done.history and done.history[0].status_code == 302, done.text[-2000:]
    return done.text


def ingested(stack: Stack, worker: str) -> dict[tuple[str, int], int]:
    """How many times each (kind, id) was indexed by the worker process ``worker``, from its log."""
    return dict(Counter((kind, int(pk)) for kind, pk in INGESTED.findall(stack.log(worker))))


def index_state(stack: Stack) -> dict:
    """Per kind: rows counted by the Milvus server (strictly), the ids it holds, its index type, and the ids
    of the database's records."""
    return json.loads(stack.shell(
        "import json; from matching import services as s; from catalog.models import Product; "
        "from matching.models import MicroVideo\n"
        "v = s.active_model_version(); state = {}\n"
        "for kind, index, model in (('product', s.product_index(v), Product),\n"
        "                           ('video', s.video_index(v), MicroVideo)):\n"
        "    rows = index.client.query(index.name, filter='', output_fields=['count(*)'], consistency_level='Strong')\n"
        "    state[kind] = {'count': rows[0]['count(*)'], 'ids': sorted(index.ids()),\n"
        "                   'index_type': index.client.describe_index(index.name, 'embedding')['index_type'],\n"
        "                   'records': sorted(model.objects.values_list('pk', flat=True))}\n"
        "print(json.dumps(state))"))


def suggestion_ranks(stack: Stack, uploaded: dict[str, int], products: dict[str, dict], videos) -> list[int]:
    """For each video, where its own product comes in the full list of suggestions."""
    ranks = []
    for v in videos:
        hits = stack.get(f"/api/videos/{uploaded[v.key]}/suggestions/", params={"k": len(products)})
        assert hits.status_code == 200, hits.text
        ranks.append(rank_of(hits.json(), "product", products[v.product_sku]["id"]))
    return ranks


# --- the test ---------------------------------------------------------------------------------------

def test_upload_suggest_review_reindex_across_two_workers_and_a_milvus_server(deployment, catalogue):
    stack = deployment
    admin = signed_in(stack, "/admin/login/", "admin", "/admin/")

    # Both workers are up, each on its own queue, as the web process sees them.
    def both_workers():
        body = admin.get(stack.base + "/api/health/", timeout=stack.request_timeout).json()
        workers = {w["hostname"].split("@")[0]: w["queues"] for w in body.get("workers", {}).get("list", [])}
        return body if len(workers) == 2 else None
    health = stack.wait_for(both_workers, 120, "both workers' heartbeats")
    assert health["ok"] and health["database"]["ok"] and health["index"]["ok"] and health["broker"]["ok"], health
    assert {w["hostname"].split("@")[0]: w["queues"] for w in health["workers"]["list"]} == {
        stack.node_name(CPU_WORKER): "celery", stack.node_name(GPU_WORKER): ML_QUEUE}

    # A merchant's catalogue, then a publisher's micro-videos, all through the API.
    act_as(stack, "merchant")
    products = {p.sku: stack.create_product(catalogue, p) for p in catalogue.products}
    for body in products.values():
        assert stack.wait_status(f"/api/products/{body['id']}/")["status"] == "indexed"
    act_as(stack, "publisher")
    videos = catalogue.videos
    uploaded = {}
    for v in videos:
        r = stack.upload_video(catalogue.root / v.file, v.caption)
        assert r.status_code == 202, r.text
        uploaded[v.key] = r.json()["id"]
    first_indexed = {}
    for v in videos:
        done = stack.wait_status(f"/api/videos/{uploaded[v.key]}/")
        assert done["status"] == "indexed" and len(done["keyframes"]) == 8, done
        first_indexed[v.key] = done["indexed_at"]

    # Suggestions come back best first with each video's own product ranked well above chance.
    gallery = len(products)
    assert_rank_sum_beats_chance(suggestion_ranks(stack, uploaded, products, videos), gallery,
                                 "video -> product suggestions")

    # Routing: every ingest ran on the GPU worker's queue, once per record; the CPU worker took no task.
    expected = {("product", b["id"]): 1 for b in products.values()} | {("microvideo", p): 1 for p in uploaded.values()}
    assert ingested(stack, GPU_WORKER) == expected
    assert Counter(RECEIVED.findall(stack.log(GPU_WORKER))) == {"matching.tasks.ingest_product": len(products),
                                                                "matching.tasks.ingest_video": len(uploaded)}
    assert not RECEIVED.findall(stack.log(CPU_WORKER)) and not ingested(stack, CPU_WORKER)
    assert f".> {ML_QUEUE} " in stack.log(GPU_WORKER) and ".> celery " in stack.log(CPU_WORKER)
    # The model lives where the model runs: the CPU worker's processes never load it.
    assert "loading model bundle" in stack.log(GPU_WORKER) and "loading model bundle" not in stack.log(CPU_WORKER)

    # The index is the Milvus server's (HNSW, not milvus-lite's FLAT), one vector per record.
    state = index_state(stack)
    for kind in ("product", "video"):
        assert state[kind]["index_type"] == "HNSW", state
        assert state[kind]["count"] == len(state[kind]["ids"]) == gallery and \
            state[kind]["ids"] == state[kind]["records"], state

    # A reviewer approves a true match and rejects a wrong one on the review page.
    true_product = {uploaded[v.key]: products[v.product_sku]["id"] for v in videos}
    pairs = {int(pk): tuple(pair) for pk, pair in json.loads(stack.shell(
        "import json; from matching.models import Match; "
        "print(json.dumps({m.pk: [m.video_id, m.product_id] for m in Match.objects.all()}))")).items()}
    assert {pair[0] for pair in pairs.values()} == set(uploaded.values())  # matches recorded at indexing time
    reviewer = signed_in(stack, "/accounts/login/", "reviewer", "/review/")
    card = reviewer.get(stack.base + "/review/", timeout=stack.request_timeout)
    assert card.status_code == 200, card.text[-2000:]
    decided: dict[str, int] = {}  # the first true match shown is approved, the first wrong one rejected
    while len(decided) < 2:
        shown = re.search(r'data-match="(\d*)"', card.text)[1]
        assert shown, f"the review queue ran out with only {decided} decided"
        video_id, product_id = pairs[int(shown)]
        verdict = "approve" if true_product[video_id] == product_id else "reject"
        action = "skip" if verdict in decided else verdict
        if action != "skip":
            decided[action] = int(shown)
        card = reviewer.post(f"{stack.base}/review/{shown}/decide/", data={"action": action},
                             headers={"X-CSRFToken": reviewer.cookies["csrftoken"]}, timeout=stack.request_timeout)
        assert card.status_code == 200, card.text[-2000:]
    reviews = "import json; from matching.models import Match, MatchDecision; print(json.dumps({" \
              "'matches': {m.pk: [m.status, m.reviewed_by.username if m.reviewed_by else None] " \
              f"for m in Match.objects.filter(pk__in={list(decided.values())})}}, " \
              "'decisions': MatchDecision.objects.count()}))"
    reviewed = json.loads(stack.shell(reviews))
    assert reviewed == {"matches": {str(decided["approve"]): ["approved", "reviewer"],
                                    str(decided["reject"]): ["rejected", "reviewer"]}, "decisions": 2}

    # The admin re-embeds and re-indexes everything through its actions.
    assert f"{gallery} products queued" in admin_action(stack, admin, "/admin/catalog/product/", "reindex",
                                                [b["id"] for b in products.values()])
    assert f"{gallery} videos queued" in admin_action(stack, admin, "/admin/matching/microvideo/", "reindex",
                                              list(uploaded.values()))
    act_as(stack, "merchant")
    for body in products.values():
        assert stack.wait_status(f"/api/products/{body['id']}/")["status"] == "indexed"
    act_as(stack, "publisher")
    for v in videos:
        done = stack.wait_status(f"/api/videos/{uploaded[v.key]}/")
        assert done["status"] == "indexed" and done["indexed_at"] > first_indexed[v.key], done
    # `manage.py reindex` then finds nothing left to do: everything is indexed by the active model.
    assert re.findall(r"\b(\d+) ", stack.manage("reindex")) == ["0", "0"]

    # After the re-index: each record embedded again on the GPU worker only, still one vector each on the
    # server, the reviewer's decisions kept, and the suggestions as good as before.
    assert ingested(stack, GPU_WORKER) == {key: 2 for key in expected}
    assert not RECEIVED.findall(stack.log(CPU_WORKER))
    state = index_state(stack)
    for kind in ("product", "video"):
        assert state[kind]["count"] == len(state[kind]["ids"]) == gallery and \
            state[kind]["ids"] == state[kind]["records"], state
    assert json.loads(stack.shell(reviews)) == reviewed
    assert_rank_sum_beats_chance(suggestion_ranks(stack, uploaded, products, videos), gallery,
                                 "video -> product suggestions after the re-index")
    for name in (CPU_WORKER, GPU_WORKER, "web"):
        assert stack.alive(name), stack.log(name)[-3000:]
