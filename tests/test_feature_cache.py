"""The per-process cache of stored second-stage features (matching.feature_cache) on the real database."""
import pytest
import torch
from django.contrib.auth import get_user_model
from django.utils import timezone

from matching.feature_cache import FeatureCache
from matching.indexing import IndexState
from matching.models import MicroVideo, ModelVersion
from ml.serving.two_stage import VideoDetail

pytestmark = pytest.mark.django_db


def detail(seed: int) -> VideoDetail:
    g = torch.Generator().manual_seed(seed)
    return VideoDetail(torch.randn(8, 16, generator=g).half(), torch.ones(8, dtype=torch.bool),
                       torch.ones(8, dtype=torch.bool))


@pytest.fixture
def videos():
    owner = get_user_model().objects.create_user("owner")
    version = ModelVersion.objects.create(name="v1", bundle_path="/tmp/v1", embed_dim=8, is_active=True)
    for i in range(3):
        MicroVideo.objects.create(publisher=owner, sha256=f"{i}" * 64, status=IndexState.INDEXED,
                                  model_version=version)
    # written as the ingest protocol writes them: queryset updates
    for i, pk in enumerate(MicroVideo.objects.order_by("pk").values_list("pk", flat=True)):
        MicroVideo.objects.filter(pk=pk).update(detail=detail(i).to_bytes() if i < 2 else None,
                                                indexed_at=timezone.now(), indexed_revision=1)
    return version


def rows():
    return list(MicroVideo.objects.order_by("pk").defer("detail"))


def test_features_are_read_once_then_served_from_memory(videos, django_assert_num_queries):
    cache = FeatureCache(10 * 2**20)
    first_rows = rows()
    with django_assert_num_queries(1):  # the missing ones, in one query
        first = cache.details(MicroVideo, first_rows)
    with_detail, without = first_rows[:2], first_rows[2]
    for i, row in enumerate(with_detail):
        assert torch.equal(first[row.pk].frames, detail(i).frames)
    assert first[without.pk] is None
    second_rows = rows()
    with django_assert_num_queries(1):  # only the row without features is asked for again
        again = cache.details(MicroVideo, second_rows)
    assert all(again[r.pk] is first[r.pk] for r in with_detail)
    assert cache.hits == 2 and cache.misses == 4


def test_a_reindexed_item_is_never_served_its_old_features(videos):
    """Publishing writes features with the revision they were computed from (every re-index bumps it) and the
    model version: either changes the stamp."""
    cache = FeatureCache(10 * 2**20)
    pk = rows()[0].pk
    cache.details(MicroVideo, rows())
    MicroVideo.objects.filter(pk=pk).update(detail=detail(7).to_bytes(), indexed_revision=2)
    assert torch.equal(cache.details(MicroVideo, rows())[pk].frames, detail(7).frames)
    newer = ModelVersion.objects.create(name="v2", bundle_path="/tmp/v2", embed_dim=8)
    MicroVideo.objects.filter(pk=pk).update(detail=detail(8).to_bytes(), model_version=newer)
    assert torch.equal(cache.details(MicroVideo, rows())[pk].frames, detail(8).frames)


def test_a_row_read_before_a_reindex_gets_none_not_features_it_does_not_describe(videos):
    cache = FeatureCache(10 * 2**20)
    stale = rows()
    MicroVideo.objects.filter(pk=stale[0].pk).update(detail=detail(9).to_bytes(), indexed_revision=2)
    got = cache.details(MicroVideo, stale)
    assert got[stale[0].pk] is None and got[stale[1].pk] is not None
    assert torch.equal(cache.details(MicroVideo, rows())[stale[0].pk].frames, detail(9).frames)  # cached: the new one


def test_the_cache_stays_within_its_byte_bound(videos):
    one = sum(t.nbytes for t in (detail(0).frames, detail(0).frame_mask, detail(0).kept))  # what it holds in memory
    cache = FeatureCache(one + one // 2)  # room for one entry
    got = cache.details(MicroVideo, rows())
    assert sum(v is not None for v in got.values()) == 2  # both returned ...
    assert cache.size_bytes == one  # ... one kept
    assert FeatureCache(0).details(MicroVideo, rows())[rows()[0].pk] is not None  # 0 MiB: nothing kept, still served


def test_the_second_stage_reads_candidates_features_through_the_cache(videos, monkeypatch):
    """services._rerank hands the ranker each candidate's stored features, prepared by the second stage once per
    cached item, in the index's order; a candidate without features of this version sends the lookup back to
    index order (None)."""
    from types import SimpleNamespace

    from matching import feature_cache, services
    from matching.vector_index import Hit

    cache = FeatureCache(10 * 2**20)
    monkeypatch.setattr(feature_cache, "_cache", cache)
    first, second, bare = rows()
    seen, prepared = {}, []

    def prepare(d):
        prepared.append(d)
        return SimpleNamespace(detail=d)

    second_stage = SimpleNamespace(prepare=prepare)

    def rank(candidates, details, scores):
        seen.update(candidates=[c.pk for c in candidates], details=details, scores=scores)
        return SimpleNamespace(order=torch.tensor([1, 0]), score=torch.tensor([0.5, 0.9], dtype=torch.float64), frame=None)

    hits = [Hit(first.pk, 0.8), Hit(second.pk, 0.7)]
    ranked = services._rerank(second_stage, videos, hits, MicroVideo, rank)
    assert seen["candidates"] == [first.pk, second.pk] and seen["scores"] == [0.8, 0.7]
    assert torch.equal(seen["details"][0].detail.frames, detail(0).frames)
    assert torch.equal(seen["details"][1].detail.frames, detail(1).frames)
    assert [(pk, score, index) for pk, score, index, _ in ranked] == [(second.pk, 0.9, 0.7), (first.pk, 0.5, 0.8)]
    assert cache.misses == 2
    services._rerank(second_stage, videos, hits, MicroVideo, rank)
    assert cache.hits == 2 and len(prepared) == 2  # the second lookup read and prepared nothing again
    assert services._rerank(second_stage, videos, hits + [Hit(bare.pk, 0.1)], MicroVideo, rank) is None
