"""Region scoring: find the product inside a frame before the frame is matched.

Hand-held footage often shows the product small, partly out of frame, on a busy backdrop or under
stickers, and a whole-frame feature then mostly describes what is around it. Each sampled frame
gives candidates: the frame itself and a grid of square crops at a few scales (`RegionConfig.grid`).
The image tower encodes every candidate; a small learned scorer (an MLP over a candidate's feature,
like the salient-frame scorer) says how product-like each one is. The frame's feature becomes the
normalised sum of the whole-frame feature and the best-scoring candidate's (the frame itself when
no crop beats it), so the towers downstream read the same kind of vector as before.

The scorer is distilled from the image tower alone (ml.training.regions): on training products
filmed under capture conditions, a candidate's target is the softmax over the frame's candidates
of its cosine with the product's photos. The product is only needed in training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.encoders import Encoder


@dataclass(frozen=True)
class RegionConfig:
    # (crop side as a share of the frame side, crops per axis evenly spaced from edge to edge)
    grid: tuple[tuple[float, int], ...] = ((0.5, 3), (0.75, 2))
    crop_weight: float = 1.0  # weight of the best candidate next to the whole frame
    hidden_dim: int = 128
    teacher_temperature: float = 0.05  # sharpness of the target over a frame's candidates
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0

    @property
    def n_candidates(self) -> int:
        return 1 + sum(n * n for _, n in self.grid)


def crop_boxes(side: int, grid: tuple[tuple[float, int], ...]) -> list[tuple[int, int, int]]:
    """(x0, y0, crop side) in pixels of a square frame of ``side``, grid by grid, row by row."""
    boxes = []
    for share, n in grid:
        crop = max(1, int(round(share * side)))
        starts = np.linspace(0, side - crop, n).round().astype(int) if n > 1 else [(side - crop) // 2]
        boxes += [(int(x), int(y), crop) for y in starts for x in starts]
    return boxes


def candidate_features(encoder: Encoder, frames: np.ndarray, grid: tuple[tuple[float, int], ...]) -> Tensor:
    """uint8 square frames [N, S, S, 3] -> unit features [N, 1 + K, D]: the whole frame, then each crop. Every
    candidate is resized to the model's side first, so they all go through the tower in one pass."""
    if frames.shape[1] != frames.shape[2]:
        raise ValueError(f"region candidates need square frames, got {frames.shape[1]}x{frames.shape[2]}")
    pixels = [encoder.frames_to_pixels(frames)]
    for x, y, crop in crop_boxes(frames.shape[1], grid):
        pixels.append(encoder.frames_to_pixels(np.ascontiguousarray(frames[:, y:y + crop, x:x + crop])))
    feats = encoder.encode_pixels(torch.cat(pixels))  # candidate-major: [(1 + K) * N, D]
    return feats.view(len(pixels), len(frames), -1).transpose(0, 1)


class RegionScorer(nn.Module):
    """``scores(candidates)`` -> [..., C]; ``pool(candidates)`` -> one feature per frame [..., D]."""

    def __init__(self, dim: int, cfg: RegionConfig = RegionConfig()):
        super().__init__()
        self.cfg = cfg
        self.scorer = nn.Sequential(nn.Linear(dim, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, 1))

    def scores(self, candidates: Tensor) -> Tensor:
        return self.scorer(F.normalize(candidates.float(), dim=-1)).squeeze(-1)

    @torch.no_grad()
    def pool(self, candidates: Tensor) -> Tensor:
        """Unit frame features: the whole frame (candidate 0) plus the best-scoring candidate, weighted."""
        candidates = F.normalize(candidates.float(), dim=-1)
        best = self.scores(candidates).argmax(-1, keepdim=True)
        picked = candidates.gather(-2, best.unsqueeze(-1).expand(*best.shape, candidates.shape[-1])).squeeze(-2)
        return F.normalize(candidates[..., 0, :] + self.cfg.crop_weight * picked, dim=-1)

    @torch.no_grad()
    def frame_features(self, encoder: Encoder, frames: np.ndarray) -> Tensor:
        """What replaces ``encoder.encode_images(frames)`` for sampled frames: [N, D] unit vectors."""
        if not len(frames):
            return torch.empty(0, encoder.embed_dim)
        return self.pool(candidate_features(encoder, frames, self.cfg.grid))

    def distillation_loss(self, candidates: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy from softmax_c(cos(candidate_c, target) / T) to softmax_c(score_c); candidates
        [B, C, D], target [B, D] (the product's photo feature)."""
        cos = (F.normalize(candidates.float(), dim=-1) @ F.normalize(target.float(), dim=-1).unsqueeze(-1)).squeeze(-1)
        teacher = torch.softmax(cos / self.cfg.teacher_temperature, dim=1)
        return -(teacher * torch.log_softmax(self.scores(candidates), dim=1)).sum(1).mean()

    def save(self, path: str | Path) -> None:
        torch.save({"cfg": asdict(self.cfg), "dim": self.scorer[0].in_features, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "RegionScorer":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = dict(saved["cfg"])
        cfg["grid"] = tuple((float(s), int(n)) for s, n in cfg["grid"])
        module = cls(saved["dim"], RegionConfig(**cfg))
        module.load_state_dict(saved["state"])
        return module.eval()
