import math

import torch

from ml.metrics import score_metrics
from ml.rerank import (MultiGrainedHead, ProductFine, RerankConfig, Reranker, VideoFine, aosm, fit_rerank_head,
                       rerank_latency_ms, rerank_scores, tune_weight)


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


def test_aligned_and_pairwise_scores_agree_and_text_queries_work(clip_like):
    data, _, words = clip_like(6)
    videos, products = fine_parts(data, words)
    head = MultiGrainedHead(16).eval()
    with torch.no_grad():
        pairwise = head(videos, products, pairwise=True)
        aligned = head(videos[torch.tensor([2, 2, 3])], products[torch.tensor([0, 2, 5])])
    torch.testing.assert_close(aligned.score, pairwise.score[[2, 2, 3], [0, 2, 5]])
    assert pairwise.frame_weight.shape == (6, 6, 6)
    text_only = ProductFine(products.words, products.word_mask, products.sentence)  # a text query: no photos
    assert torch.isfinite(head(videos, text_only, pairwise=True).score).all()


def test_rerank_scores_reorders_only_the_top_n():
    first = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])

    class Flip(torch.nn.Module):  # fine score = -product index: prefers low indices
        def forward(self, videos, products):
            return type("S", (), {"score": -products.sentence[:, 0]})()

    videos = VideoFine(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.bool))
    products = ProductFine(torch.zeros(4, 1, 2), torch.ones(4, 1, dtype=torch.bool),
                           torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0]]))
    out = rerank_scores(first, Flip(), videos, products, top_n=2, weight=10.0)
    assert out[0].argsort(descending=True).tolist() == [0, 1, 2, 3]
    assert out[1].argsort(descending=True).tolist() == [2, 3, 1, 0]  # top-2 {3, 2} flipped, the rest kept
    same = rerank_scores(first, Flip(), videos, products, top_n=4, weight=0.0)
    assert torch.equal(same.argsort(1), first.argsort(1))


def test_trained_head_reranks_better_and_points_at_a_product_frame(clip_like):
    train, _, train_words = clip_like(256, seed=1)
    test, kinds, test_words = clip_like(64, seed=2)
    cfg = RerankConfig(epochs=4, batch_size=64, top_n=20)
    head, seconds = fit_rerank_head(*fine_parts(train, train_words), train.video_product, cfg)
    assert seconds > 0
    videos, products = fine_parts(test, test_words)
    # A weak first stage: the mean frame (noise included) vs the product text.
    first = torch.nn.functional.normalize(test.video_frames.mean(1), dim=-1) @ test.product_text.T
    base = score_metrics(first, test.video_product)["v2p_R@1"]
    weight = tune_weight(first, head, videos, products, test.video_product, cfg)
    assert weight > 0
    reranked = score_metrics(rerank_scores(first, head, videos, products, cfg.top_n, weight), test.video_product)
    assert reranked["v2p_R@1"] > base + 5

    reranker = Reranker(head, weight, cfg.top_n)
    result = reranker.rerank(videos[3:4], products[torch.arange(10)], first[3, :10])
    assert result.order[0] == 3 and result.score.shape == (10,)
    assert kinds[3][int(result.frame[3])] == "product"
    by_product = reranker.rerank(products[5:6], videos[torch.arange(10)], first[:10, 5])
    assert by_product.order[0] == 5 and kinds[5][int(by_product.frame[5])] == "product"
    assert rerank_latency_ms(reranker, videos, products, n=50, queries=3) > 0
