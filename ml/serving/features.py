"""From raw inputs (frames, photos, texts) to the per-modality features the instance towers read.

One place for it, so training, evaluation and serving see identical inputs: the same frame
sampler (`ml.serving.video.sample_frames`), the same encoders. The generated datasets' features are
made from these by ml.training.dataset.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.serving.encoders import Encoder
from ml.serving.padding import pad_groups
from ml.serving.regions import RegionScorer

FRAMES_PER_VIDEO = 8


def video_features(encoder: Encoder, frames: Sequence[np.ndarray], captions: Sequence[str],
                   regions: RegionScorer | None = None):
    """frames: per video uint8 [T, H, W, 3]. Returns (frame feats [N, T, D], mask [N, T], caption feats [N, D]).
    With ``regions``, each frame's feature pools it with its most product-like crop (ml.serving.regions)."""
    flat = frame_features(encoder, np.concatenate(list(frames)), regions) if len(frames) \
        else torch.empty(0, encoder.embed_dim)
    groups = list(flat.split([len(f) for f in frames])) if len(frames) else []
    feats, mask = pad_groups(groups, encoder.embed_dim, dtype=torch.float32)
    return feats, mask, encoder.encode_texts(list(captions))


def frame_features(encoder: Encoder, frames: np.ndarray, regions: RegionScorer | None = None) -> torch.Tensor:
    """[N, D] unit features of sampled frames [N, S, S, 3]: the whole frame's, or pooled with its best region."""
    return encoder.encode_images(frames) if regions is None else regions.frame_features(encoder, frames)


def product_features(encoder: Encoder, photos: Sequence[Sequence[np.ndarray]], texts: Sequence[str]):
    """photos: per product a list of uint8 [H, W, 3] images. Returns (photo feats [N, P, D], mask, text feats)."""
    return *photo_features(encoder, photos), encoder.encode_texts(list(texts))


def photo_features(encoder: Encoder, photos: Sequence[Sequence[np.ndarray]]):
    """photos: per product a list of uint8 [H, W, 3] images. Returns (photo feats [N, P, D], mask [N, P])."""
    size = encoder.image_size
    groups = []
    for images in photos:
        # Photos come in any size: bring them to the model's side first so they stack into one batch.
        batch = np.stack([np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BICUBIC))
                          for im in images])
        groups.append(encoder.encode_images(batch))
    return pad_groups(groups, encoder.embed_dim, dtype=torch.float32)


def load_photo(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


