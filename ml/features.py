"""From raw inputs (frames, photos, texts) to the per-modality features the instance towers read.

One place for it, so training, evaluation and serving see identical inputs: the same frame
sampler (`ml.video.sample_frames`), the same encoders, the same product text.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ml.encoders import Encoder
from ml.texts import product_text

FRAMES_PER_VIDEO = 8


def _stack(groups: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad variable-length [n_i, D] groups to [N, max n, D] with a True-for-real mask."""
    longest = max((len(g) for g in groups), default=0) or 1
    out = torch.zeros(len(groups), longest, dim)
    mask = torch.zeros(len(groups), longest, dtype=torch.bool)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
        mask[i, : len(g)] = True
    return out, mask


def video_features(encoder: Encoder, frames: Sequence[np.ndarray], captions: Sequence[str]):
    """frames: per video uint8 [T, H, W, 3]. Returns (frame feats [N, T, D], mask [N, T], caption feats [N, D])."""
    flat = encoder.encode_images(np.concatenate(list(frames))) if len(frames) else torch.empty(0, encoder.embed_dim)
    groups = list(flat.split([len(f) for f in frames])) if len(frames) else []
    feats, mask = _stack(groups, encoder.embed_dim)
    return feats, mask, encoder.encode_texts(list(captions))


def product_features(encoder: Encoder, photos: Sequence[Sequence[np.ndarray]], texts: Sequence[str]):
    """photos: per product a list of uint8 [H, W, 3] images. Returns (photo feats [N, P, D], mask, text feats)."""
    size = encoder.image_size
    groups = []
    for images in photos:
        # Photos come in any size: bring them to the model's side first so they stack into one batch.
        batch = np.stack([np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BICUBIC))
                          for im in images])
        groups.append(encoder.encode_images(batch))
    feats, mask = _stack(groups, encoder.embed_dim)
    return feats, mask, encoder.encode_texts(list(texts))


def load_photo(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def decode_videos(manifest, videos, *, frames_per_video: int = FRAMES_PER_VIDEO, frame_size: int = 64,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Sample every video of a generated dataset once, with the serving sampler: key -> uint8 [T, S, S, 3]."""
    from ml.datagen.video import read_video_frames
    from ml.video import sample_frames

    out = {}
    for v in tqdm(videos, desc="decode videos", disable=not progress):
        path = Path(manifest.root) / v.file
        if path.suffix == ".npy":  # train/val frames kept as arrays: pick them the way sample_frames does
            frames = read_video_frames(path)
            out[v.key] = _square(frames[segment_centres(len(frames), frames_per_video)], frame_size)
        else:
            out[v.key] = sample_frames(path, frames_per_video, frame_size).frames
    return out


def sampled_frame_kinds(video, frames_per_video: int) -> list[str]:
    """What each sampled frame of a generated video shows ("product" or a kind of noise)."""
    return [video.frame_kinds[i] for i in segment_centres(len(video.frame_kinds), frames_per_video)]


def manifest_features(encoder: Encoder, manifest, split: str, frames: dict[str, np.ndarray], *,
                      progress: bool = True, batch: int = 64):
    """A `FeatureSet` for one split of a generated dataset (ml.datagen): its videos and its products."""
    from ml.ontology import load_ontology
    from ml.train_instance import FeatureSet

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
    v_feats, v_mask = _stack([row[m] for part in v_parts for row, m in zip(part[0], part[1])], encoder.embed_dim)
    p_feats, p_mask = _stack([row[m] for part in p_parts for row, m in zip(part[0], part[1])], encoder.embed_dim)
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


def _square(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop and resize frames to size x size, as the ffmpeg sampler does."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        s = min(h, w)
        crop = f[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
    return np.stack(out)
