import torch

from ml.serving.salient import SalientConfig, SalientFrameSelector, filter_feature_set, kept_kind_share
from ml.training.heads import fit_salient_selector


def test_select_keeps_the_best_valid_frames_only():
    sel = SalientFrameSelector(4, SalientConfig(keep=2))
    frames = torch.eye(4)[None].repeat(2, 1, 1)  # frame t = axis t
    with torch.no_grad():  # a scorer that reads axis 0 (weight 3), then axis 1 (weight 2)
        sel.scorer[0].weight.zero_(); sel.scorer[0].bias.zero_(); sel.scorer[2].weight.zero_()
        sel.scorer[0].weight[0, 0], sel.scorer[0].weight[1, 1] = 3.0, 2.0
        sel.scorer[2].weight[0, :2] = 1.0
        sel.scorer[1] = torch.nn.Identity()
    mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    kept = sel.select(frames, mask)
    assert kept.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_caption_weight_adds_frame_caption_similarity():
    sel = SalientFrameSelector(4, SalientConfig(keep=1, caption_weight=10.0))
    frames = torch.eye(4)[None]
    caption = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert sel.select(frames, None, caption).tolist() == [[False, False, True, False]]


def test_language_supervised_selector_keeps_product_frames(clip_like):
    train, _, _ = clip_like(256, seed=1)
    test, kinds, _ = clip_like(48, seed=2)
    sel, seconds = fit_salient_selector(train.video_frames, train.video_frame_mask,
                                        train.product_text[train.video_product], SalientConfig(keep=2, steps=150, lr=1e-2))
    assert seconds > 0
    filtered = filter_feature_set(sel, test)
    assert filtered.video_frame_mask.sum(1).eq(2).all() and test.video_frame_mask.all()  # a copy, not in place
    share = kept_kind_share(filtered.video_frame_mask, kinds)
    assert share["base_rate"] == 50.0
    assert share["kept_share"] > 85.0  # the language-guided teacher itself: 96


def test_kept_kind_share_counts_by_hand():
    kept = torch.tensor([[True, False, True], [True, True, False]])
    kinds = [["product", "logo", "black"], ["product", "product"]]
    share = kept_kind_share(kept, kinds)
    assert share["kept_share"] == 75.0 and share["base_rate"] == 60.0 and share["videos_without_kind_kept"] == 0.0
