import torch

from ml.serving.caption_branch import caption_scores
from ml.evaluation.metrics import retrieval_ranks
from ml.serving.text_query import embed_queries
from ml.training.heads import TextQueryConfig, fit_text_query_head


def test_text_queries_find_their_videos(clip_like):
    train, _, _ = clip_like(256, seed=1)
    test, _, _ = clip_like(48, seed=2)
    # Stand-ins for the index embeddings: fixed random maps of the mean product frame / the photos.
    proj = torch.randn(16, 12, generator=torch.Generator().manual_seed(5))

    def index(data):
        return (data.video_frames.mean(1) @ proj, data.product_images.mean(1) @ proj)

    videos, products = index(train)
    head, seconds = fit_text_query_head(train.product_text, torch.arange(train.num_products), videos,
                                        train.video_product, products, TextQueryConfig(epochs=30))
    assert seconds > 0
    queries = embed_queries(head, test.product_text)
    assert queries.shape == (48, 12)
    test_videos, _ = index(test)
    _, t2v = retrieval_ranks(test_videos, queries, test.video_product)
    assert (t2v <= 5).mean() > 0.5  # chance: 5 / 48


def test_caption_branch_scores_and_silences_empty_captions():
    captions = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    scores = caption_scores(captions, texts, has_caption=torch.tensor([True, False]))
    torch.testing.assert_close(scores, torch.tensor([[1.0, 2 ** -0.5], [0.0, 0.0]]))
