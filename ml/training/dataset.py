"""Features of a generated dataset (ml.datagen) for training and evaluation, made with the serving
feature path (`ml.serving.features`) so both see identical inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ml.datagen.video import read_video_frames
from ml.serving.encoders import Encoder
from ml.serving.features import FRAMES_PER_VIDEO, load_photo, product_features, video_features
from ml.serving.ontology import load_ontology
from ml.serving.padding import pad_groups
from ml.serving.texts import product_text
from ml.serving.video import sample_frames
from ml.training.data import FeatureSet


def decode_videos(manifest, videos, *, frames_per_video: int = FRAMES_PER_VIDEO, frame_size: int = 64,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Sample every video of a generated dataset once, with the serving sampler: key -> uint8 [T, S, S, 3]."""
    out = {}
    for v in tqdm(videos, desc="decode videos", disable=not progress):
        path = Path(manifest.root) / v.file
        if path.suffix == ".npy":  # train/val frames kept as arrays: pick them the way sample_frames does
            frames = read_video_frames(path)
            out[v.key] = square_frames(frames[segment_centres(len(frames), frames_per_video)], frame_size)
        else:
            out[v.key] = sample_frames(path, frames_per_video, frame_size).frames
    return out


def sampled_frame_kinds(video, frames_per_video: int) -> list[str]:
    """What each sampled frame of a generated video shows ("product" or a kind of noise)."""
    return [video.frame_kinds[i] for i in segment_centres(len(video.frame_kinds), frames_per_video)]


def manifest_features(encoder: Encoder, manifest, split: str, frames: dict[str, np.ndarray], *,
                      progress: bool = True, batch: int = 64):
    """A `FeatureSet` for one split of a generated dataset (ml.datagen): its videos and its products."""
    onto = load_ontology()
    products = manifest.products_in(split)
    videos = manifest.videos_in(split)
    index = {p.sku: i for i, p in enumerate(products)}
    root = Path(manifest.root)

    v_parts = [video_features(encoder, [frames[v.key] for v in videos[i: i + batch]],
                              [v.caption for v in videos[i: i + batch]])
               for i in tqdm(range(0, len(videos), batch), desc=f"features {split} videos", disable=not progress)]
    p_parts = [product_features(encoder, [[load_photo(root / im) for im in p.images] for p in products[i: i + batch]],
                                [product_text(p.title, p.description) for p in products[i: i + batch]])
               for i in tqdm(range(0, len(products), batch), desc=f"features {split} products", disable=not progress)]
    v_feats, v_mask = pad_groups([row[m] for part in v_parts for row, m in zip(part[0], part[1])], encoder.embed_dim, dtype=torch.float32)
    p_feats, p_mask = pad_groups([row[m] for part in p_parts for row, m in zip(part[0], part[1])], encoder.embed_dim, dtype=torch.float32)
    cats = [onto.get(p.category_path) for p in products]
    return FeatureSet(
        video_frames=v_feats, video_frame_mask=v_mask, video_caption=torch.cat([part[2] for part in v_parts]),
        product_images=p_feats, product_image_mask=p_mask, product_text=torch.cat([part[2] for part in p_parts]),
        product_middle=torch.tensor([c.ancestor(1).level_index for c in cats], dtype=torch.long),
        product_upper=torch.tensor([c.ancestor(0).level_index for c in cats], dtype=torch.long),
        video_product=torch.tensor([index[v.product_sku] for v in videos], dtype=torch.long),
        video_ids=[v.key for v in videos], product_ids=[p.sku for p in products],
    )


def segment_centres(n_frames: int, num: int) -> np.ndarray:
    """Indices of the frames at the centres of `num` equal segments (what sample_frames decodes)."""
    return np.minimum(((np.arange(num) + 0.5) * n_frames / num).astype(int), n_frames - 1)


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop and resize frames to size x size, as the ffmpeg sampler does."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        s = min(h, w)
        crop = f[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
    return np.stack(out)
