import numpy as np
import pytest
import torch

from ml.serving.towers import InstanceConfig
from ml.training.losses import LossConfig
from ml.evaluation.metrics import retrieval_ranks, similarity
from ml.training.mqmc import MQMCConfig
from ml.serving.towers import PrototypeAttention, embed_products, embed_videos
from ml.training.prototypes import PrototypeMoCo, diversity_loss
from ml.training.train_instance import TrainConfig, evaluate, load_checkpoint, train

MIDDLE_TO_UPPER = (0, 0, 1, 1)  # as in the clip_like fixture (conftest)


def config(**instance) -> TrainConfig:
    return TrainConfig(
        method="mqmc", instance=InstanceConfig(visual_dim=16, text_dim=16, visual_hidden_dim=32, embed_dim=32,
                                               proj_dim=16, **instance),
        loss=LossConfig(), mqmc=MQMCConfig(queue_size=16, momentum=0.99, middle_to_upper=MIDDLE_TO_UPPER),
        lr=3e-3, batch_size=32, epochs=3, seed=0, progress=False,
    )


def test_diversity_loss_by_hand():
    same = torch.nn.functional.normalize(torch.ones(2, 3, 4), dim=-1)
    assert float(diversity_loss(same)) == pytest.approx(1.0)
    assert float(diversity_loss(torch.eye(3)[None])) == 0.0


def test_similarity_takes_the_best_prototype():
    videos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one video, two prototypes
    products = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(similarity(videos, products), torch.tensor([[1.0, 0.8]]))


def test_prototype_attention_ignores_padding():
    attn = PrototypeAttention(8, 3)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    weights = attn.attention(x, mask)
    assert weights.shape == (2, 3, 5) and weights[1, :, 2:].abs().sum() == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


def test_multi_prototype_mqmc_trains_evaluates_and_resumes(tmp_path, clip_like):
    train_set, _, _ = clip_like(96, seed=1)
    val, _, _ = clip_like(32, seed=2)
    cfg = config(video_prototypes=3)
    model, history = train(cfg, train_set, val, out_dir=tmp_path)
    assert isinstance(model, PrototypeMoCo)
    assert model.video_queue.keys.shape == (4, 16, 3 * 16)
    losses = [e["train_loss"] for e in history["epochs"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    videos = embed_videos(model, val.video_frames, val.video_caption, val.video_frame_mask)
    products = embed_products(model, val.product_images, val.product_text, val.product_image_mask)
    assert videos.shape == (32, 3, 16)
    np.testing.assert_allclose(np.linalg.norm(videos, axis=-1), 1.0, rtol=1e-5)
    metrics = evaluate(model, val)
    v2p, _ = retrieval_ranks(videos, products, val.video_product)
    assert metrics["v2p_MnR"] == pytest.approx(v2p.mean())
    loaded, _ = load_checkpoint(tmp_path / "last.pt")
    np.testing.assert_allclose(embed_videos(loaded, val.video_frames, val.video_caption, val.video_frame_mask),
                               videos, atol=1e-6)
