import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml.serving.features import video_features
from ml.serving.regions import RegionConfig, RegionScorer, candidate_features, crop_boxes
from ml.training.dataset import segment_centres, square_frames
from ml.training.regions import fit_region_scorer, parse_grid


class ColourEncoder:
    """Stands in for the image tower: an image's feature is its mean colour (and a constant), normalised."""

    embed_dim = 4

    def frames_to_pixels(self, frames: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        return F.adaptive_avg_pool2d(pixels, 2)  # every image to one side, its mean colour kept

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean((2, 3))
        return F.normalize(torch.cat([mean, torch.full((len(pixels), 1), 0.1)], 1), dim=-1)

    def encode_images(self, frames: np.ndarray) -> torch.Tensor:
        return self.encode_pixels(self.frames_to_pixels(frames))

    def encode_texts(self, texts):
        return torch.zeros(len(texts), self.embed_dim)


def test_crop_boxes_tile_the_frame_edge_to_edge():
    boxes = crop_boxes(160, ((0.5, 3), (0.75, 2)))
    assert len(boxes) == RegionConfig().n_candidates - 1 == 13
    assert boxes[:3] == [(0, 0, 80), (40, 0, 80), (80, 0, 80)] and boxes[-1] == (40, 40, 120)
    assert all(x + s <= 160 and y + s <= 160 for x, y, s in boxes)


def test_frames_pool_with_their_best_scoring_candidate():
    cfg = RegionConfig(grid=((0.5, 2),))
    scorer = RegionScorer(4, cfg)
    with torch.no_grad():  # scores read the red channel
        scorer.scorer[0].weight.zero_(); scorer.scorer[0].bias.zero_(); scorer.scorer[2].weight.zero_()
        scorer.scorer[0].weight[0, 0] = 1.0; scorer.scorer[2].weight[0, 0] = 1.0
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0, 4:, 4:, 0] = 255  # red in the bottom-right quarter: crop 3
    frames[1, :, :, 2] = 255  # all blue: no crop is redder than the frame
    encoder = ColourEncoder()
    candidates = candidate_features(encoder, frames, cfg.grid)
    assert candidates.shape == (2, 5, 4)
    pooled = scorer.frame_features(encoder, frames)
    assert torch.allclose(pooled[0], F.normalize(candidates[0, 0] + candidates[0, 4], dim=-1))
    assert torch.allclose(pooled[1], candidates[1, 0], atol=1e-6)
    feats, mask, _ = video_features(encoder, [frames], [""], regions=scorer)  # the serving path
    assert torch.allclose(feats[0], pooled) and mask.all()


def test_distilled_scorer_finds_the_product_crop_and_survives_a_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    n, c, d = 512, 6, 16
    product = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    candidates = F.normalize(torch.randn(n, c, d, generator=g), dim=-1)
    where = torch.randint(0, c, (n,), generator=g)
    candidates[torch.arange(n), where] = F.normalize(product + 0.3 * torch.randn(n, d, generator=g), dim=-1)
    candidates[torch.arange(n), where, 0] += 2.0  # what product crops share: a product look
    cfg = RegionConfig(grid=((0.5, 2),), steps=150, lr=1e-2)
    scorer, seconds = fit_region_scorer(candidates[:384], product[:384], cfg)
    assert seconds > 0
    picked = scorer.scores(candidates[384:]).argmax(1)
    assert (picked == where[384:]).float().mean() > 0.8  # chance: 1 in 6
    scorer.save(tmp_path / "regions.pt")
    loaded = RegionScorer.load(tmp_path / "regions.pt")
    assert loaded.cfg == cfg and torch.equal(loaded.pool(candidates), scorer.pool(candidates))


def test_training_frames_are_sampled_as_a_worker_samples_them():
    video = np.zeros((10, 12, 8, 3), np.uint8)  # portrait: the centre 8 x 8 square is kept
    video[:, 2:10] = np.arange(10, dtype=np.uint8)[:, None, None, None] * 20
    picks = segment_centres(len(video), 4)  # what ml.training.regions samples from its capture footage
    frames = square_frames(video[picks], 16)
    assert frames.shape == (4, 16, 16, 3) and picks.tolist() == [1, 3, 6, 8]
    assert [int(f[8, 8, 0]) for f in frames] == [20, 60, 120, 160]


def test_grid_option_reads_scales_and_refuses_what_is_not_a_grid():
    assert parse_grid("0.33x4,0.5x3,0.75x2") == ((0.33, 4), (0.5, 3), (0.75, 2))
    assert parse_grid("1x1") == ((1.0, 1),)
    for bad in ("", "0.5", "0.5x", "x3", "0.5x3,", "1.5x2", "0x2", "0.5x0", "0.5x2.5", "halfx3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_grid(bad)
