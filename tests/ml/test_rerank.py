import math

import torch

from ml.evaluation.metrics import score_metrics
from ml.serving.rerank import (MultiGrainedHead, ProductFine, RerankConfig, Reranker, TopCandidates, VideoFine, aosm,
                               rerank_latency_ms, rerank_scores, score_top_candidates)
from ml.training.heads import fit_rerank_head


def fine_parts(data, words):
    videos = VideoFine(data.video_frames.half(), data.video_frame_mask)
    products = ProductFine(words.half(), torch.ones(words.shape[:2], dtype=torch.bool), data.product_text,
                           data.product_images.half(), data.product_image_mask)
    return videos, products


def test_aosm_by_hand():
    sims = torch.tensor([[0.9, 0.1], [0.2, 0.3]])
    both = torch.ones(2, dtype=torch.bool)
    # Very low temperature: each softmax picks its maximum -> the best pair, 0.9, in both orders.
    score, row_weight = aosm(sims, both, both, torch.tensor(1e-4))
    assert math.isclose(float(score), 0.9, abs_tol=1e-4) and row_weight.argmax() == 0
    # Very high temperature: plain means of the means.
    score, _ = aosm(sims, both, both, torch.tensor(1e4))
    assert math.isclose(float(score), float(sims.mean()), abs_tol=1e-3)
    # A masked row/column is ignored: only 0.3 is left.
    score, row_weight = aosm(sims, torch.tensor([False, True]), torch.tensor([False, True]), torch.tensor(0.05))
    assert math.isclose(float(score), 0.3, abs_tol=1e-6) and row_weight.tolist() == [0.0, 1.0]


def test_aosm_with_one_item_on_a_side_equals_the_general_case():
    """The one-row / one-column shortcut gives what the general two-order form gives when the single item is
    padded with a masked one (which forces the general form), masked rows and empty sets included."""
    torch.manual_seed(0)
    tau = torch.tensor(0.07)
    for trial in range(20):
        batch, many = (3, 5), 6 if trial % 2 else 1  # one side a set, or both single (one pair)
        sims = torch.rand(*batch, many, 1) * 2 - 1
        rows = torch.rand(*batch, many) > 0.3
        one = torch.rand(*batch, 1) > (0.0 if trial < 10 else 0.5)
        pad = torch.zeros(*batch, 1, dtype=torch.bool)
        for transpose in (False, True):
            s, r, c = (sims.transpose(-1, -2), one, rows) if transpose else (sims, rows, one)
            padded = torch.cat([s, torch.rand_like(s)], dim=-2 if transpose else -1)
            pr, pc = (torch.cat([r, pad], -1), c) if transpose else (r, torch.cat([c, pad], -1))
            score, weight = aosm(s, r, c, tau)
            want_score, want_weight = aosm(padded, pr, pc, tau)
            torch.testing.assert_close(score, want_score)
            torch.testing.assert_close(weight, want_weight[..., :weight.shape[-1]])


def test_aligned_and_pairwise_scores_agree_and_text_queries_work(clip_like):
    data, _, words = clip_like(6)
    head = MultiGrainedHead(16).eval()
    with torch.no_grad():
        videos, products = head.prepare_videos(fine_parts(data, words)[0]), head.prepare_products(fine_parts(data, words)[1])
        pairwise = head(videos, products, pairwise=True)
        aligned = head(videos[torch.tensor([2, 2, 3])], products[torch.tensor([0, 2, 5])])
        text_only = ProductFine(products.words, products.word_mask, products.sentence)  # a text query: no photos
        assert torch.isfinite(head(videos, text_only, pairwise=True).score).all()
    torch.testing.assert_close(aligned.score, pairwise.score[[2, 2, 3], [0, 2, 5]])
    assert pairwise.frame_weight.shape == (6, 6, 6)


def test_rerank_scores_reorders_only_the_top_n():
    first = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    # Each video's top 2 with a fine score that prefers low product indices.
    top = TopCandidates(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 3, 2]), -torch.tensor([0.0, 1, 3, 2]), "video")
    out = rerank_scores(first, top, weight=10.0)
    assert out[0].argsort(descending=True).tolist() == [0, 1, 2, 3]
    assert out[1].argsort(descending=True).tolist() == [2, 3, 1, 0]  # top-2 {3, 2} flipped, the rest kept
    assert torch.equal(rerank_scores(first, top, weight=0.0).argsort(1), first.argsort(1))
    by_product = TopCandidates(torch.tensor([3, 3]), torch.tensor([1, 0]), torch.tensor([0.0, 1.0]), "product")
    out = rerank_scores(first, by_product, weight=1.0)  # product 3 re-ranks its top-2 videos: 1 (0.4), 0 (0.1)
    assert out[:, 3].argsort(descending=True).tolist() == [0, 1]
    torch.testing.assert_close(out[:, :3], first[:, :3])


def test_trained_head_reranks_better_and_points_at_a_product_frame(clip_like):
    train, _, train_words = clip_like(256, seed=1)
    test, kinds, test_words = clip_like(64, seed=2)
    cfg = RerankConfig(epochs=4, batch_size=64)
    head, seconds = fit_rerank_head(*fine_parts(train, train_words), train.video_product, cfg)
    assert seconds > 0
    videos, products = fine_parts(test, test_words)
    # A weak first stage: the mean frame (noise included) vs the product text.
    first = torch.nn.functional.normalize(test.video_frames.mean(1), dim=-1) @ test.product_text.T
    base = score_metrics(first, test.video_product)["v2p_R@1"]
    top_v = score_top_candidates(first, head, videos, products, 20, "video")
    top_p = score_top_candidates(first, head, videos, products, 20, "product")
    weight = 1.0
    reranked = score_metrics(rerank_scores(first, top_v, weight), test.video_product)
    assert reranked["v2p_R@1"] > base + 5
    by_product = score_metrics(rerank_scores(first, top_p, weight), test.video_product)
    assert by_product["p2v_R@1"] > score_metrics(first, test.video_product)["p2v_R@1"]

    reranker = Reranker(head, weight, 20)
    stored_products, stored_videos = reranker.prepare_products(products), reranker.prepare_videos(videos)
    assert stored_products.words.dtype == torch.float16
    result = reranker.rerank(videos[3:4], stored_products[torch.arange(10)], first[3, :10])
    assert result.order[0] == 3 and result.score.shape == (10,)
    assert kinds[3][int(result.frame[3])] == "product"
    by_product = reranker.rerank(products[5:6], stored_videos[torch.arange(10)], first[:10, 5])
    assert by_product.order[0] == 5 and kinds[5][int(by_product.frame[5])] == "product"
    assert rerank_latency_ms(reranker, videos, products, n=50, queries=3) > 0
