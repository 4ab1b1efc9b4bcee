import json

import numpy as np
import pytest
import torch

from ml.serving.towers import InstanceConfig
from ml.training.losses import LossConfig
from ml.training.mqmc import MQMCConfig
from ml.serving.towers import embed_products, embed_videos
from ml.training.data import FeatureSet
from ml.training.train_instance import TrainConfig, evaluate, load_checkpoint, train

MIDDLE_TO_UPPER = (0, 0, 1, 1)
TINY = InstanceConfig(visual_dim=16, text_dim=8, visual_hidden_dim=32, embed_dim=32, proj_dim=16)


def toy_features(num_products: int, videos_per_product: int, seed: int, maps_seed: int = 0) -> FeatureSet:
    """Each product has a latent code; all features are noisy linear maps of it (maps shared across splits)."""
    maps = torch.Generator().manual_seed(maps_seed)
    a_visual, a_text = torch.randn(6, 16, generator=maps), torch.randn(6, 8, generator=maps)
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_products, 6, generator=g)
    video_product = torch.arange(num_products).repeat_interleave(videos_per_product)
    nv = len(video_product)
    frame_mask = torch.ones(nv, 4, dtype=torch.bool)
    frame_mask[::3, 3] = False  # some videos have a padded frame
    middle = torch.arange(num_products) % 4
    return FeatureSet(
        video_frames=(latent[video_product] @ a_visual)[:, None] + 0.5 * torch.randn(nv, 4, 16, generator=g),
        video_frame_mask=frame_mask,
        video_caption=latent[video_product] @ a_text + 0.3 * torch.randn(nv, 8, generator=g),
        product_images=(latent @ a_visual)[:, None] + 0.3 * torch.randn(num_products, 2, 16, generator=g),
        product_image_mask=torch.ones(num_products, 2, dtype=torch.bool),
        product_text=latent @ a_text + 0.3 * torch.randn(num_products, 8, generator=g),
        product_middle=middle,
        product_upper=torch.tensor(MIDDLE_TO_UPPER)[middle],
        video_product=video_product,
        video_ids=[f"v{i}" for i in range(nv)],
        product_ids=[f"p{i}" for i in range(num_products)],
    )


def config(method="mqmc", epochs=2, **overrides) -> TrainConfig:
    return TrainConfig(
        method=method, instance=TINY, loss=LossConfig(),
        mqmc=MQMCConfig(queue_size=16, momentum=0.99, middle_to_upper=MIDDLE_TO_UPPER),
        lr=3e-3, weight_decay=1e-5, batch_size=32, epochs=epochs, seed=0, progress=False, **overrides,
    )


@pytest.fixture(scope="module")
def splits():
    return toy_features(64, 2, seed=1), toy_features(40, 1, seed=2)


def test_feature_set_round_trip_and_validation(tmp_path, splits):
    data = splits[0]
    data.save(tmp_path / "f.pt")
    loaded = FeatureSet.load(tmp_path / "f.pt")
    assert loaded.video_ids == data.video_ids and torch.equal(loaded.video_frames, data.video_frames)
    batch = data.pair_batch(torch.tensor([0, 5]))
    assert batch.product_index.tolist() == [0, 2] and batch.middle.tolist() == [0, 2]
    with pytest.raises(ValueError, match="video_caption"):
        FeatureSet(**{**vars(data), "video_caption": data.video_caption[:3]})
    with pytest.raises(ValueError, match="product_upper"):
        FeatureSet(**{**vars(data), "product_upper": torch.zeros(64, dtype=torch.long)}).check_categories(MIDDLE_TO_UPPER)


@pytest.mark.parametrize("method", ["mqmc", "moco", "infonce"])
def test_training_beats_chance_clearly(tmp_path, splits, method):
    train_set, val_set = splits
    model, history = train(config(method, epochs=15), train_set, val_set, tmp_path)
    best = max(history["epochs"], key=lambda e: e["val"]["score"])
    assert history["best_epoch"] == best["epoch"]
    # 40 validation products: chance R@10 is 25 %, chance R@1 2.5 %
    assert best["val"]["v2p_R@10"] > 75 and best["val"]["p2v_R@10"] > 75
    assert best["val"]["v2p_R@1"] > 20
    saved = json.loads((tmp_path / "history.json").read_text())
    assert len(saved["step_loss"]) == 15 * 4 and len(saved["epochs"]) == 15

    reloaded, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == history["best_epoch"]
    assert evaluate(reloaded, val_set)["score"] == pytest.approx(best["val"]["score"])


def test_resume_continues_bit_for_bit(tmp_path, splits):
    train_set, val_set = splits
    full_model, full_history = train(config(epochs=2), train_set, val_set, tmp_path / "full")
    train(config(epochs=1), train_set, val_set, tmp_path / "part")
    resumed_model, resumed_history = train(config(epochs=2), train_set, val_set, tmp_path / "part",
                                           resume_from=tmp_path / "part" / "last.pt")
    assert resumed_history["step_loss"] == full_history["step_loss"]
    assert resumed_history["epochs"] == full_history["epochs"]
    full_state, resumed_state = full_model.state_dict(), resumed_model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for name, value in full_state.items():
        assert torch.equal(value, resumed_state[name]), name
    assert (full_state["product_queue.middle"] >= 0).any()  # the queues took part

    different = TrainConfig(**{**vars(config(epochs=3)), "lr": 1.0})
    with pytest.raises(ValueError, match="lr"):
        train(different, train_set, None, tmp_path / "other", resume_from=tmp_path / "part" / "last.pt")


def test_embeddings_are_normalised_numpy_per_modality(splits):
    torch.manual_seed(0)
    _, val_set = splits
    model, _ = train(config(epochs=1), splits[0])
    videos = embed_videos(model, val_set.video_frames, val_set.video_caption, val_set.video_frame_mask, batch_size=7)
    products = embed_products(model, val_set.product_images.numpy(), val_set.product_text.numpy())
    assert videos.dtype == np.float32 and videos.shape == (40, 16) and products.shape == (40, 16)
    assert np.allclose(np.linalg.norm(videos, axis=1), 1, atol=1e-5)
    visual = embed_videos(model, val_set.video_frames, val_set.video_caption, modality="visual")
    assert visual.shape == (40, 32)
    assert model.training  # the caller's mode is left as it was
    with pytest.raises(ValueError, match="modality"):
        embed_videos(model, val_set.video_frames, val_set.video_caption, modality="audio")
