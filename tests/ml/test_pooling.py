import pytest
import torch

from ml.serving.towers import InstanceConfig, create_towers
from ml.serving.pooling import available_poolings, create_pooling

POOLINGS = ("mean", "seq_transformer", "hierarchical")


def frames_and_mask(seed=0, b=5, t=6, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    mask[3] = False  # a video without any valid frame
    return x, mask


def test_registry_lists_the_new_poolings():
    assert set(POOLINGS) <= set(available_poolings())
    with pytest.raises(ValueError, match="unknown pooling"):
        create_pooling("nope", 8)


@pytest.mark.parametrize("name", POOLINGS)
def test_padding_is_ignored_and_empty_videos_stay_finite(name):
    torch.manual_seed(0)
    pool = create_pooling(name, 16).eval()
    x, mask = frames_and_mask()
    out = pool(x, mask)
    assert out.shape == (5, 16) and torch.isfinite(out).all()
    changed = x.clone()
    changed[~mask] = 100.0  # whatever sits in padding slots
    torch.testing.assert_close(pool(changed, mask)[[0, 1, 2, 4]], out[[0, 1, 2, 4]])


@pytest.mark.parametrize("name,order_aware", [("mean", False), ("hierarchical", False), ("seq_transformer", True)])
def test_only_the_sequence_transformer_depends_on_frame_order(name, order_aware):
    torch.manual_seed(0)
    pool = create_pooling(name, 16).eval()
    x, _ = frames_and_mask()
    reversed_ = x.flip(1)
    same = torch.allclose(pool(x), pool(reversed_), atol=1e-5)
    assert same != order_aware


def test_seq_transformer_gets_gradients_through_the_instance_tower():
    cfg = InstanceConfig(visual_dim=16, text_dim=8, visual_hidden_dim=32, embed_dim=32, proj_dim=16,
                         frame_pooling="seq_transformer")
    video, product = create_towers(cfg)
    assert type(video.pool).__name__ == "SeqTransformerPooling" and type(product.pool).__name__ == "MeanPooling"
    x, mask = frames_and_mask()
    out = video(x, mask, torch.randn(5, 8))
    out.embedding.sum().backward()
    assert video.pool.position.grad is not None and video.pool.position.grad.abs().sum() > 0


def test_hierarchical_clip_assignment_is_a_distribution_over_clips_for_valid_frames():
    pool = create_pooling("hierarchical", 16).eval()
    x, mask = frames_and_mask()
    _, assign = pool.clip_assignment(x, mask)
    torch.testing.assert_close(assign.sum(-1), mask.float())
