import numpy as np
import pytest
import torch

from ml.evaluation.metrics import retrieval_metrics, retrieval_ranks, selection_score

# Products are the 4 unit axes, so video row i holds its similarity to each product; every row is a
# permutation of the same values (same norm), so the similarities compare exactly across videos.
VIDEOS = np.array([
    [0.9, 0.5, 0.3, 0.1],  # product 0 -> rank 1
    [0.9, 0.1, 0.3, 0.5],  # product 0 -> rank 1
    [0.1, 0.5, 0.9, 0.3],  # product 1 -> rank 2 (product 2 scores higher)
    [0.5, 0.9, 0.3, 0.1],  # product 3 -> rank 4
])
PRODUCTS = np.eye(4)
VIDEO_PRODUCT = np.array([0, 0, 1, 3])  # product 2 has no video: not a product->video query


def test_hand_made_ranks_both_directions():
    v2p, p2v = retrieval_ranks(VIDEOS, PRODUCTS, VIDEO_PRODUCT)
    assert v2p.tolist() == [1, 1, 2, 4]
    # product 0: best of its videos (0 and 1 tie at 0.9; the other positive is no competitor) -> 1
    # product 1: its video 2 scores 0.5; video 3 (0.9) beats it and video 0 (0.5) ties -> 3
    # product 3: its video 3 scores 0.1; videos 1, 2 beat it and video 0 ties -> 4
    assert p2v.tolist() == [1, 3, 4]


def test_hand_made_summary():
    m = retrieval_metrics(VIDEOS, PRODUCTS, VIDEO_PRODUCT)
    assert m["v2p_R@1"] == 50.0 and m["v2p_R@5"] == 100.0 and m["v2p_R@10"] == 100.0
    assert m["v2p_MdR"] == 1.5 and m["v2p_MnR"] == 2.0
    assert m["p2v_R@1"] == pytest.approx(100 / 3) and m["p2v_MdR"] == 3.0 and m["p2v_MnR"] == pytest.approx(8 / 3)
    assert m["score"] == pytest.approx((50 + 100 + 100 + 100 / 3 + 100 + 100) / 6)
    assert selection_score(m) == m["score"]


def test_embeddings_are_normalised_and_torch_accepted():
    scale = np.array([[3.0], [0.2], [7.0], [1.5]])
    v2p, p2v = retrieval_ranks(torch.tensor(VIDEOS * scale), torch.tensor(PRODUCTS * 5), torch.tensor(VIDEO_PRODUCT))
    assert v2p.tolist() == [1, 1, 2, 4] and p2v.tolist() == [1, 3, 4]


def test_collapsed_embeddings_rank_last_not_first():
    v2p, p2v = retrieval_ranks(np.ones((3, 2)), np.ones((3, 2)), np.array([0, 1, 2]))
    assert v2p.tolist() == [3, 3, 3] and p2v.tolist() == [3, 3, 3]


def brute_force(videos, products, video_product):
    v = videos / np.linalg.norm(videos, axis=1, keepdims=True)
    p = products / np.linalg.norm(products, axis=1, keepdims=True)
    sims = v @ p.T
    v2p = [1 + int(np.sum(np.delete(sims[i], video_product[i]) >= sims[i, video_product[i]])) for i in range(len(v))]
    p2v = []
    for j in range(len(p)):
        mine = video_product == j
        if mine.any():
            p2v.append(1 + int(np.sum(sims[~mine, j] >= sims[mine, j].max())))
    return v2p, p2v


def test_matches_brute_force_and_chunking_does_not_matter():
    rng = np.random.default_rng(0)
    videos, products = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    video_product = rng.integers(0, 20, size=50)
    expected = brute_force(videos, products, video_product)
    for chunk in (7, 4096):
        v2p, p2v = retrieval_ranks(videos, products, video_product, chunk_size=chunk)
        assert v2p.tolist() == expected[0] and p2v.tolist() == expected[1]
