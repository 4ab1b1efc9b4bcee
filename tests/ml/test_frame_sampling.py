import numpy as np
import torch

from ml.serving.towers import InstanceConfig
from ml.serving.frame_sampling import frame_ensemble_embeddings, sample_frame_subset, shuffle_frames
from ml.training.losses import LossConfig
from ml.training.mqmc import MQMCConfig
from ml.serving.towers import embed_videos
from ml.training.train_instance import TrainConfig, train

MIDDLE_TO_UPPER = (0, 0, 1, 1)  # as in the clip_like fixture (conftest)


def numbered_frames():
    frames = torch.arange(2 * 6, dtype=torch.float).view(2, 6, 1)  # frame value = its own id
    mask = torch.tensor([[True] * 6, [True, False, True, False, False, False]])
    return frames, mask


def test_subset_draws_valid_frames_in_temporal_order():
    frames, mask = numbered_frames()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        sub, sub_mask = sample_frame_subset(frames, mask, 3, g)
        ids = sub.squeeze(-1)
        assert sub.shape == (2, 3, 1) and sub_mask[0].all()
        assert (ids[0].diff() > 0).all()  # in order
        assert sorted(ids[1][sub_mask[1]].tolist()) == [6.0, 8.0]  # both valid frames of the short video
    firsts = {int(sample_frame_subset(frames, mask, 1, g)[0][0, 0, 0]) for _ in range(60)}
    assert firsts == set(range(6))  # single-frame sampling reaches every frame


def test_shuffle_permutes_frames_with_their_mask():
    frames, mask = numbered_frames()
    shuffled, shuffled_mask = shuffle_frames(frames, mask, seed=3)
    assert not torch.equal(shuffled, frames)
    for i in range(2):
        assert sorted(shuffled[i, :, 0].tolist()) == frames[i, :, 0].tolist()
        assert sorted(shuffled[i][shuffled_mask[i]].squeeze(-1).tolist()) == frames[i][mask[i]].squeeze(-1).tolist()


def test_single_frame_training_and_frame_ensemble(clip_like):
    data, _, _ = clip_like(64, seed=1)
    cfg = TrainConfig(method="mqmc", instance=InstanceConfig(visual_dim=16, text_dim=16, visual_hidden_dim=32,
                                                             embed_dim=32, proj_dim=16),
                      loss=LossConfig(), mqmc=MQMCConfig(queue_size=16, middle_to_upper=MIDDLE_TO_UPPER),
                      lr=3e-3, batch_size=32, epochs=2, progress=False, train_frames=1)
    model, history = train(cfg, data)
    assert np.isfinite(history["epochs"][-1]["train_loss"])
    ensemble = frame_ensemble_embeddings(model, data.video_frames, data.video_caption, data.video_frame_mask)
    assert ensemble.shape == (64, 16)
    np.testing.assert_allclose(np.linalg.norm(ensemble, axis=1), 1.0, rtol=1e-5)
    # A video with a single valid frame: the ensemble is that frame's embedding.
    one = torch.zeros_like(data.video_frame_mask)
    one[:, 2] = True
    np.testing.assert_allclose(frame_ensemble_embeddings(model, data.video_frames, data.video_caption, one),
                               embed_videos(model, data.video_frames, data.video_caption, one), atol=1e-5)
