import torch
import torch.nn.functional as F

from ml.serving.category import CategoryConfig
from ml.serving.ontology import load_ontology
from ml.serving.rerank import RerankConfig
from ml.serving.salient import SalientConfig
from ml.serving.two_stage import ProductDetail, TwoStage, TwoStageConfig, VideoDetail
from ml.training.second_stage import SplitInputs, fit_selector, fit_two_stage, salient_only

CFG = TwoStageConfig(salient=SalientConfig(keep=3, steps=150), rerank=RerankConfig(epochs=8), top_n=10,
                     category=CategoryConfig(epochs=40, hidden_dim=64))


def labels_for(data) -> torch.Tensor:
    """(upper, middle, lower) of each toy product: four lower categories under different middles, by middle index."""
    onto = load_ontology()
    lowers = [next(c for c in onto.lower if c.parent.level_index == m) for m in (0, 5, 10, 15)]
    return torch.tensor([[c.ancestor(0).level_index, c.ancestor(1).level_index, c.level_index]
                         for c in (lowers[m] for m in data.product_middle.tolist())])


def inputs(data, words, two_stage) -> SplitInputs:
    """The toy split with pooled-feature embeddings standing in for the instance towers."""
    kept = salient_only(two_stage, data)
    frames = (kept.video_frames * kept.video_frame_mask[..., None]).sum(1)
    video = F.normalize(F.normalize(frames, dim=-1) + data.video_caption, dim=-1)
    product = F.normalize(F.normalize(data.product_images.mean(1), dim=-1) + data.product_text, dim=-1)
    return SplitInputs(data, words.half(), torch.ones(words.shape[:2], dtype=torch.bool), labels_for(data),
                       video, product, torch.ones(len(video), dtype=torch.bool), data.product_text)


def fitted(clip_like):
    train, _, train_words = clip_like(192, seed=1)
    val, kinds, val_words = clip_like(48, seed=2)
    two_stage = TwoStage(16, 16, CFG)
    fit_selector(two_stage, train)
    report = fit_two_stage(two_stage, inputs(train, train_words, two_stage), inputs(val, val_words, two_stage))
    return two_stage, report, (val, kinds, val_words)


def details(two_stage, data, words):
    videos = two_stage.describe_videos(data.video_frames, data.video_frame_mask, data.video_caption,
                                       [True] * len(data.video_ids))
    products = [ProductDetail(words[i].half(), torch.ones(len(words[i]), dtype=torch.bool), data.product_text[i].half(),
                              data.product_images[i].half(), data.product_image_mask[i]) for i in range(len(words))]
    return videos, products


def test_details_round_trip_through_bytes():
    video = VideoDetail(torch.randn(8, 4).half(), torch.ones(8, dtype=torch.bool), torch.rand(8) > 0.5,
                        torch.randn(8), None)
    back = VideoDetail.from_bytes(video.to_bytes())
    assert torch.equal(back.frames, video.frames) and torch.equal(back.kept, video.kept) and back.category is None
    query = ProductDetail(torch.randn(3, 4).half(), torch.ones(3, dtype=torch.bool), torch.randn(4).half())
    back = ProductDetail.from_bytes(query.to_bytes())
    assert torch.equal(back.words, query.words) and back.photos is None


def test_fitted_second_stage_beats_the_first_on_validation_and_survives_a_save(clip_like, tmp_path):
    two_stage, report, (val, kinds, words) = fitted(clip_like)
    assert two_stage.weights["rerank"] > 0
    first, second = report["first_stage"], report["two_stage"]
    assert second["v2p_R@1"] + second["p2v_R@1"] > first["v2p_R@1"] + first["p2v_R@1"], report
    assert set(report["category_accuracy"]) == {"upper", "middle", "lower"}

    videos, products = details(two_stage, val, words)
    # Salient frames: the kept frames are mostly product frames (half the frames are noise).
    kept = torch.stack([v.kept for v in videos])
    is_product = torch.tensor([[k == "product" for k in row] for row in kinds])
    assert kept.sum(1).eq(3).all() and (kept & is_product).sum() / kept.sum() > 0.8
    # Serving one video: candidates from the first stage, reordered; the driving frame is a product frame.
    levels = labels_for(val)
    hits, driving = 0, []
    for i in range(len(videos)):
        first_stage = F.normalize(val.video_frames[i].mean(0), dim=0) @ F.normalize(val.product_images.mean(1), dim=-1).T
        top = first_stage.topk(10).indices
        ranked = two_stage.rank_products(videos[i], [products[j] for j in top], levels[top], first_stage[top])
        hits += int(top[ranked.order[0]] == i)
        if i in top:
            driving.append(kinds[i][int(ranked.frame[(top == i).nonzero()[0, 0]])] == "product")
    assert hits / len(videos) > 0.5 and sum(driving) / len(driving) > 0.8

    path = tmp_path / "two_stage.pt"
    two_stage.save(path)
    loaded = TwoStage.load(path)
    assert loaded.weights == two_stage.weights
    top = torch.arange(10)
    a = two_stage.rank_products(videos[0], products[:10], levels[top], torch.zeros(10))
    b = loaded.rank_products(VideoDetail.from_bytes(videos[0].to_bytes()),
                             [ProductDetail.from_bytes(p.to_bytes()) for p in products[:10]], levels[top], torch.zeros(10))
    torch.testing.assert_close(a.score, b.score, atol=1e-3, rtol=0)
    # Candidates prepared once (what serving caches) score as the stored details do, frames included.
    prepared = loaded.rank_products(videos[0], [loaded.prepare(p) for p in products[:10]], levels[top], torch.zeros(10))
    torch.testing.assert_close(prepared.score, b.score, atol=1e-5, rtol=0)
    assert torch.equal(prepared.frame, b.frame)
    raw = loaded.rank_videos(products[0], videos[:10], torch.zeros(10), levels[:1])
    cached = loaded.rank_videos(products[0], [loaded.prepare(v) for v in videos[:10]], torch.zeros(10), levels[:1])
    torch.testing.assert_close(cached.score, raw.score, atol=1e-5, rtol=0)
    # Product -> videos and text -> videos go through the same head.
    ranked = loaded.rank_videos(products[0], videos[:10], torch.zeros(10), levels[:1])
    assert ranked.order.tolist()[0] == 0 and ranked.frame.shape == (10,)
    text = ProductDetail(products[0].words, products[0].word_mask, products[0].sentence)
    assert loaded.rank_videos(text, videos[:10], torch.zeros(10)).score.shape == (10,)


def test_category_boost_uses_the_deepest_known_level():
    two_stage = TwoStage(16, 16, TwoStageConfig(salient=None, rerank=None))
    two_stage.weights |= {"boost_level": "lower", "boost": 1.0}
    lower = torch.log_softmax(torch.randn(1, 312), dim=-1)
    levels = two_stage.category_head.levels(lower)
    video = VideoDetail(torch.zeros(2, 16).half(), torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool),
                        None, lower[0])
    onto = load_ontology()
    c = onto.lower[7]
    products = torch.tensor([[c.ancestor(0).level_index, c.ancestor(1).level_index, c.level_index],
                             [c.ancestor(0).level_index, c.ancestor(1).level_index, -1],  # only a middle category
                             [-1, -1, -1]])
    ranked = two_stage.rank_products(video, [], products, torch.zeros(3))
    expected = [levels["lower"][0, c.level_index], levels["middle"][0, c.ancestor(1).level_index], 0.0]
    torch.testing.assert_close(ranked.score, torch.tensor(expected))
    assert ranked.frame is None  # no re-ranking head, no selector: nothing says which frame


def test_caption_branch_adds_the_caption_match_and_ignores_videos_without_a_caption():
    two_stage = TwoStage(4, 4, TwoStageConfig(salient=None, rerank=None, category=None))
    two_stage.weights |= {"caption": 0.5, "caption_text": 2.0}
    text = torch.tensor([1.0, 0, 0, 0])
    product = ProductDetail(text[None].half(), torch.ones(1, dtype=torch.bool), text.half(), text[None].half(),
                            torch.ones(1, dtype=torch.bool))
    frames, ones = torch.zeros(2, 4).half(), torch.ones(2, dtype=torch.bool)
    with_caption = VideoDetail(frames, ones, ones, caption=text.half())
    without = VideoDetail(frames, ones, ones)
    torch.testing.assert_close(two_stage.rank_videos(product, [with_caption, without], torch.zeros(2)).score,
                               torch.tensor([0.5, 0.0]))
    query = ProductDetail(product.words, product.word_mask, product.sentence)  # a text query: its own weight
    torch.testing.assert_close(two_stage.rank_videos(query, [with_caption, without], torch.zeros(2)).score,
                               torch.tensor([2.0, 0.0]))
    ranked = two_stage.rank_products(with_caption, [product], torch.full((1, 3), -1), torch.zeros(1))
    torch.testing.assert_close(ranked.score, torch.tensor([0.5]))


def test_without_a_head_or_saliency_the_frame_most_like_the_photos_drives_the_match():
    two_stage = TwoStage(4, 4, TwoStageConfig(salient=None, rerank=None, category=None))
    frames = torch.eye(4)[[0, 1, 2, 3, 1]]  # frame 4 repeats frame 1 but is padding
    video = VideoDetail(frames.half(), torch.tensor([True, True, True, True, False]), torch.ones(5, dtype=torch.bool))
    ones = torch.ones(1, dtype=torch.bool)

    def product(*photos):
        return ProductDetail(torch.zeros(1, 4).half(), ones, torch.zeros(4).half(),
                             torch.stack(photos).half(), torch.ones(len(photos), dtype=torch.bool))

    near_2 = product(torch.tensor([0.1, 0, 1, 0]))
    near_3_or_1 = product(torch.tensor([0, 0.2, 0, 1]), torch.tensor([-1.0, 0, 0, 0]))
    ranked = two_stage.rank_products(video, [near_2, near_3_or_1], torch.full((2, 3), -1), torch.zeros(2))
    assert ranked.frame.tolist() == [2, 3]
    placements = two_stage.rank_videos(near_2, [video, video], torch.zeros(2))
    assert placements.frame.tolist() == [2, 2]
