"""Which frames a model sees: training-time sampling, inference-time ensembling, the shuffling test.

- Sparse sampling (ClipBERT): each training step sees a few random frames per video
  (`TrainConfig.train_frames`); inference uses all of them.
- Single-frame training + frame ensemble (Singularity): train on one random frame per video,
  embed every frame alone at inference and average the unit embeddings (= averaging the scores).
- Shuffling test (HiTeA): the same videos with their frames in random order; an order-blind
  model scores the same, an order-aware one shows how much it leans on order.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ml.serving.towers import embed_videos


def sample_frame_subset(frames: Tensor, mask: Tensor, k: int, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor]:
    """``k`` random valid frames per video, kept in temporal order: ([B, k, D], [B, k]).

    A video with fewer than ``k`` valid frames keeps all of them (the rest of its slots are padding).
    """
    k = min(k, frames.shape[1])
    keys = torch.rand(mask.shape, generator=generator).to(frames.device).masked_fill(~mask, -1.0)
    index = keys.topk(k, dim=1).indices.sort(dim=1).values
    return frames.gather(1, index[..., None].expand(-1, -1, frames.shape[-1])), mask.gather(1, index)


def sparse_frames(batch, k: int):
    """A `ml.training.data.PairBatch` whose videos keep ``k`` random frames each (global torch RNG: resumable)."""
    frames, mask = sample_frame_subset(batch.video_frames, batch.video_frame_mask, k)
    return replace(batch, video_frames=frames, video_frame_mask=mask)


def shuffle_frames(frames: Tensor, mask: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Every video's frames (and mask) in a random order of their own."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(mask.shape, generator=g).argsort(dim=1)
    return frames.gather(1, order[..., None].expand_as(frames)), mask.gather(1, order)


@torch.no_grad()
def frame_ensemble_embeddings(model, frames: Tensor, caption: Tensor, mask: Tensor, **kwargs) -> np.ndarray:
    """Singularity inference: each frame embedded alone, unit embeddings averaged over valid frames -> [N, D]."""
    total = 0
    for t in range(frames.shape[1]):
        alone = torch.zeros_like(mask)
        alone[:, t] = mask[:, t]
        emb = torch.from_numpy(embed_videos(model, frames, caption, alone, **kwargs))
        total = total + emb * mask[:, t, None].to(emb.dtype)
    return F.normalize(total, dim=-1).numpy()
