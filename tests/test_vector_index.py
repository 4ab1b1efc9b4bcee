"""The vector index on real Milvus backends: milvus-lite (file and server) and embedded Milvus standalone.

The same behaviour suite runs on each backend; backends are module-scoped because Milvus
standalone takes seconds to start. Each test works in its own collections (unique prefix).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from matching.bench_index import milvus_standalone
from matching.vector_index import (
    MILVUS_LITE_FLUSH_ROWS,
    Hit,
    IndexSchemaError,
    MilvusLiteServer,
    ProductIndex,
    VideoIndex,
    _filter_expr,
    _state,
    collection_options,
    connect,
    disconnect,
    milvus_lite_server,
)

DIM = 8
REPO = Path(__file__).resolve().parents[1]


# --- backends ---------------------------------------------------------------------------------

@contextmanager
def embedded_milvus_standalone(base_dir: Path):
    """Milvus 2.3 standalone from the `milvus` PyPI package, on loopback ports, data under base_dir."""
    pytest.importorskip("milvus", reason="the `milvus` package (embedded Milvus 2.3) is not installed")
    try:
        with milvus_standalone(base_dir, startup_timeout=180) as uri:
            yield uri
    except RuntimeError as exc:
        if "did not become healthy" not in str(exc):
            raise
        pytest.fail(str(exc))


@pytest.fixture(scope="module", params=["milvus_lite_file", "milvus_lite_server", "milvus_standalone"])
def client(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "milvus_lite_file":
        backend = nullcontext(str(base / "milvus.db"))
    elif request.param == "milvus_lite_server":
        backend = milvus_lite_server(base / "data")
    else:
        backend = embedded_milvus_standalone(base)
    with backend as uri:
        yield connect(uri)
        disconnect(uri)


@pytest.fixture
def prefix():
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def products(client, prefix):
    index = ProductIndex(client, version="v1", dim=DIM, prefix=prefix)
    index.ensure()
    yield index
    index.drop()


# --- data -------------------------------------------------------------------------------------

@dataclass
class Rows:
    ids: np.ndarray
    vectors: np.ndarray
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray

    def upsert_into(self, index) -> int:
        return index.upsert(self.ids, self.vectors, self.upper, self.middle, self.lower)

    def unit(self, position: int) -> np.ndarray:
        return self.vectors[position] / np.linalg.norm(self.vectors[position])


def make_rows(n: int = 30, seed: int = 0, first_id: int = 1) -> Rows:
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return Rows(ids, rng.normal(size=(n, DIM)).astype(np.float32), ids % 2, 10 + ids % 3, 100 + ids % 5)


@pytest.fixture
def rows(products) -> Rows:
    data = make_rows()
    data.upsert_into(products)
    return data


def stored(index, ids) -> dict[int, np.ndarray]:
    return index.get([int(i) for i in ids])


# --- the behaviour suite, on every backend ----------------------------------------------------

def test_ensure_creates_an_empty_collection_once(client, prefix):
    index = VideoIndex(client, version="v1", dim=DIM, prefix=prefix)
    assert not index.exists()
    try:
        assert index.ensure() is index
        assert index.exists() and index.count() == 0
        index.ensure()  # idempotent
        assert index.name in client.list_collections()
    finally:
        index.drop()
    assert not index.exists()


def test_upsert_twice_replaces_rows_without_duplicates(products, rows):
    assert products.count() == len(rows.ids)
    changed = make_rows(n=5, seed=1)  # ids 1..5 again, new vectors
    changed.upper[:] = 7
    assert changed.upsert_into(products) == 5
    assert products.count() == len(rows.ids)
    got = stored(products, changed.ids)
    for position, id_ in enumerate(changed.ids.tolist()):
        np.testing.assert_allclose(got[id_], changed.unit(position), atol=1e-6)
    hits = products.search(changed.vectors[:1], k=3, upper_id=7)[0]
    assert {h.id for h in hits} <= set(changed.ids.tolist()) and hits[0].id == changed.ids[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_delete_removes_rows(products, rows):
    gone = [int(rows.ids[0]), int(rows.ids[1])]
    products.delete(gone + [999_999])  # an absent id is no error
    assert products.count() == len(rows.ids) - 2
    assert stored(products, gone) == {}
    hits = products.search(rows.vectors[:2], k=len(rows.ids))
    assert not {h.id for query in hits for h in query} & set(gone)


def test_search_filters_by_category(products, rows):
    query = rows.vectors[:1]
    cases = [
        (dict(upper_id=1), rows.upper == 1),
        (dict(middle_id=11), rows.middle == 11),
        (dict(lower_ids=[101, 103]), np.isin(rows.lower, [101, 103])),
        (dict(upper_id=0, middle_id=12), (rows.upper == 0) & (rows.middle == 12)),
    ]
    for filters, mask in cases:
        hits = products.search(query, k=len(rows.ids), **filters)[0]
        assert sorted(h.id for h in hits) == sorted(rows.ids[mask].tolist()), filters
    assert products.search(query, k=5, lower_ids=[]) == [[]]
    assert products.search(query, k=5, upper_id=42) == [[]]


def test_search_excludes_ids_and_still_fills_k(products, rows):
    excluded = rows.ids[:3].tolist()
    hits = products.search(rows.vectors[:1], k=5, exclude_ids=excluded)[0]
    assert len(hits) == 5 and not {h.id for h in hits} & set(excluded)


def test_k_larger_than_count_returns_every_row_best_first_with_cosine_scores(products, rows):
    queries = rows.vectors[:3]
    results = products.search(queries, k=1000)
    assert len(results) == 3
    units = rows.vectors / np.linalg.norm(rows.vectors, axis=1, keepdims=True)
    for query, hits in zip(queries, results):
        assert all(isinstance(h, Hit) for h in hits)
        assert sorted(h.id for h in hits) == sorted(rows.ids.tolist())
        expected = dict(zip(rows.ids.tolist(), units @ (query / np.linalg.norm(query))))
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.id], abs=1e-5)
    assert results[0][0].id == rows.ids[0]


def test_existing_collection_with_another_dim_is_an_error(client, prefix, products, rows):
    wider = ProductIndex(client, version="v1", dim=DIM + 1, prefix=prefix)
    assert wider.name == products.name
    with pytest.raises(IndexSchemaError, match=f"{DIM}-d vectors but the model makes {DIM + 1}-d"):
        wider.ensure()
    assert products.count() == len(rows.ids)


def test_bad_input_is_rejected_before_touching_the_collection(products, rows):
    ids, vectors = rows.ids[:2], rows.vectors[:2]
    upper, middle, lower = rows.upper[:2], rows.middle[:2], rows.lower[:2]
    with_nan, with_inf, with_zero = vectors.copy(), vectors.copy(), vectors.copy()
    with_nan[1, 3], with_inf[0, 0], with_zero[1] = np.nan, np.inf, 0.0
    bad_upserts = [
        (ids, vectors[:, :-1], upper, middle, lower),  # wrong dim
        (ids, vectors[0], upper, middle, lower),  # not 2-D
        (ids, with_nan, upper, middle, lower),
        (ids, with_inf, upper, middle, lower),
        (ids, with_zero, upper, middle, lower),
        (ids, vectors.astype(np.float64) * 1e39, upper, middle, lower),  # overflows float32
        (ids[:1], vectors, upper, middle, lower),  # fewer ids than vectors
        (ids, vectors, upper, middle, lower[:1]),  # fewer lower ids than rows
        (ids.astype(np.float64), vectors, upper, middle, lower),  # float ids
        ([ids[0], ids[0]], vectors, upper, middle, lower),  # repeated id
        (ids, vectors, ["1", "2"], middle, lower),  # text category ids
        (ids, np.array([["a"] * DIM] * 2), upper, middle, lower),  # not numbers
    ]
    before = stored(products, rows.ids)
    for args in bad_upserts:
        with pytest.raises((ValueError, TypeError)):
            products.upsert(*args)
    with pytest.raises(ValueError):
        products.search(rows.vectors[:1], k=0)
    with pytest.raises(TypeError):
        products.search(rows.vectors[:1], k=3, upper_id="0 or id > 0")
    assert products.count() == len(rows.ids)
    after = stored(products, rows.ids)
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_kinds_and_model_versions_never_share_vectors(client, prefix):
    indexes = [ProductIndex(client, "v1", DIM, prefix=prefix), VideoIndex(client, "v1", DIM, prefix=prefix),
               ProductIndex(client, "v2", DIM, prefix=prefix)]
    try:
        for seed, index in enumerate(indexes):
            make_rows(n=4 + seed, seed=seed).upsert_into(index)  # same ids 1.., different vectors
        assert [index.count() for index in indexes] == [4, 5, 6]
        video_rows = make_rows(n=5, seed=1)
        np.testing.assert_allclose(stored(indexes[1], [1])[1], video_rows.unit(0), atol=1e-6)
    finally:
        for index in indexes:
            index.drop()


def test_flush_keeps_rows_and_milvus_lite_flushes_by_itself(client, products):
    many = make_rows(n=MILVUS_LITE_FLUSH_ROWS + 4)
    many.upsert_into(products)
    state = _state(client)
    assert state.unflushed[products.name] == (0 if state.milvus_lite else len(many.ids))
    products.flush()
    assert state.unflushed[products.name] == 0
    assert products.count() == len(many.ids)
    assert products.search(many.vectors[-1:], k=1)[0][0].id == many.ids[-1]


def test_operations_create_the_collection_when_needed(client, prefix):
    index = ProductIndex(client, "v1", DIM, prefix=prefix)
    try:
        assert index.search(make_rows(n=1).vectors, k=3) == [[]]
        assert index.exists() and index.count() == 0
    finally:
        index.drop()


# --- without a backend ------------------------------------------------------------------------

def test_collection_names_follow_kind_version_and_prefix():
    assert ProductIndex(None, "v1", DIM, prefix="mv_").name == "mv_products_v1"
    assert VideoIndex(None, "v1", DIM).name == "videos_v1"
    dotted, underscored = ProductIndex(None, "mqmc-b32.2", DIM), ProductIndex(None, "mqmc_b32_2", DIM)
    assert dotted.name.startswith("products_mqmc_b32_2_") and dotted.name != underscored.name
    with pytest.raises(ValueError):
        ProductIndex(None, "v1", DIM, prefix="mv-")
    with pytest.raises(ValueError):
        ProductIndex(None, "--", DIM)


def test_filter_expression_is_built_from_integers_only():
    assert _filter_expr(upper_id=np.int64(3), lower_ids=(1, 2), exclude_ids=[9]) == \
        "upper_id == 3 and lower_id in [1, 2] and id not in [9]"
    assert _filter_expr() == ""
    for bad in ("1 or 1 == 1", 1.5, True, None):
        with pytest.raises(TypeError):
            _filter_expr(middle_id=1, lower_ids=[bad])


def test_connect_reuses_one_client_per_uri_and_disconnect_frees_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = connect("var/milvus.db")
    assert connect(str(tmp_path / "var" / "milvus.db")) is client
    disconnect("var/milvus.db")
    with milvus_lite_server(tmp_path / "var" / "milvus.db"):  # another process can open it now
        pass
    assert connect("var/milvus.db") is not client
    disconnect("var/milvus.db")


# --- the tuned index per backend (matching.vector_index.collection_options) ----------------------

def test_collection_options_take_the_measured_index_of_each_backend_and_overrides(client):
    options = collection_options(client)
    if _state(client).milvus_lite:
        assert options["index_type"] == "FLAT"
    else:
        assert options["index_type"] == "HNSW" and options["index_params"]["M"] > 0 and options["search_params"]["ef"] > 0
    assert options["consistency_level"] == "Bounded"
    custom = collection_options(client, "ivf_flat", {"nlist": 8}, {"nprobe": 8}, "Strong")
    assert custom == {"index_type": "IVF_FLAT", "index_params": {"nlist": 8}, "search_params": {"nprobe": 8},
                      "consistency_level": "Strong"}
    with pytest.raises(ValueError, match="consistency_level"):
        collection_options(client, consistency_level="Sometimes")


def test_a_tuned_collection_builds_its_index_and_reads_its_own_writes(client, prefix):
    """At Bounded consistency a fresh write may be invisible to a search; get() asks again strictly and a
    search may ask for Strong, so a caller that just wrote always finds it."""
    index = ProductIndex(client, version="v1", dim=DIM, prefix=prefix, **collection_options(client))
    try:
        index.ensure()
        assert client.describe_index(index.name, "embedding")["index_type"] == index.index_type
        data = make_rows()
        data.upsert_into(index)
        assert set(stored(index, data.ids)) == set(data.ids.tolist())
        hits = index.search(data.vectors[:1], k=3, consistency_level="Strong")[0]
        assert hits[0].id == data.ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        index.flush()
        assert index.search(data.vectors[1:2], k=1, consistency_level="Strong")[0][0].id == data.ids[1]
    finally:
        index.drop()


# --- the milvus-lite server -------------------------------------------------------------------

def test_processes_share_a_store_through_the_server_and_it_survives_a_restart(tmp_path):
    server = MilvusLiteServer(tmp_path / "shared.db")
    uri = server.start()
    try:
        writer = textwrap.dedent(f"""
            import numpy as np
            from matching.vector_index import ProductIndex, connect
            ProductIndex(connect({uri!r}), "v1", {DIM}).upsert(
                [1, 2], np.eye(2, {DIM}, dtype=np.float32), [0, 0], [0, 0], [0, 1])
        """)
        subprocess.run([sys.executable, "-c", writer], cwd=REPO, check=True, timeout=120)
        index = ProductIndex(connect(uri), "v1", DIM)
        assert index.search(np.eye(1, DIM, dtype=np.float32), k=5, lower_ids=[0])[0][0].id == 1
        with pytest.raises(RuntimeError, match="one process only"):
            connect(str(tmp_path / "shared.db"))  # the server holds the store
    finally:
        server.stop()
    assert server.process is None
    with milvus_lite_server(tmp_path / "shared.db", port=server.port) as uri:  # same URI: the cached client reconnects
        assert ProductIndex(connect(uri), "v1", DIM).count() == 2


def test_server_that_cannot_start_reports_why(tmp_path):
    with milvus_lite_server(tmp_path / "data") as uri:
        port = int(uri.rsplit(":", 1)[1])
        with pytest.raises(RuntimeError, match="already in use"):
            MilvusLiteServer(tmp_path / "other", port=port).start()
        second = MilvusLiteServer(tmp_path / "data", log_path=tmp_path / "second.log")
        with pytest.raises(RuntimeError, match="(?s)exited with code.*lock"):
            second.start()
        assert second.process is None
