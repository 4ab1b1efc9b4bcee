"""Salient-frame filtering (LGDN, language-guided denoising): keep the 2-4 frames that matter.

Micro-videos mix product shots with noise frames (black frames, transitions, logo cards,
unrelated scenes). LGDN scores frames against the paired text and keeps only the salient ones.
At indexing time the paired product is unknown, so the score combines:

- a learned scorer (a small MLP over the frame feature, the "learned query"), trained by
  *language supervision*: it is distilled from the softmax over a video's frames of their cosine
  with the paired product's text. The product text is only needed in training;
- optionally the cosine with the video's own caption (the publisher's text), weight ``caption_weight``.

The top ``keep`` valid frames stay; the rest leave the frame mask, so every pooling and re-ranker
downstream sees only them (`filter_frames`, `filter_feature_set`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SalientConfig:
    keep: int = 3  # frames kept per video
    caption_weight: float = 0.0  # weight of cos(frame, caption) next to the learned score
    hidden_dim: int = 128
    teacher_temperature: float = 0.05  # sharpness of the language-supervised target over frames
    steps: int = 300
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0


class SalientFrameSelector(nn.Module):
    """``scores(frames, mask, caption)`` -> [B, T]; ``select`` -> the kept-frame mask [B, T]."""

    def __init__(self, dim: int, cfg: SalientConfig = SalientConfig()):
        super().__init__()
        self.cfg = cfg
        self.scorer = nn.Sequential(nn.Linear(dim, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, 1))

    def scores(self, frames: Tensor, mask: Tensor | None = None, caption: Tensor | None = None) -> Tensor:
        """Saliency of every frame; padding frames score -inf."""
        frames = F.normalize(frames, dim=-1)
        s = self.scorer(frames).squeeze(-1)
        if caption is not None and self.cfg.caption_weight:
            s = s + self.cfg.caption_weight * (frames @ F.normalize(caption, dim=-1).unsqueeze(-1)).squeeze(-1)
        return s if mask is None else s.masked_fill(~mask, float("-inf"))

    @torch.no_grad()
    def select(self, frames: Tensor, mask: Tensor | None = None, caption: Tensor | None = None) -> Tensor:
        """Mask [B, T] of the ``keep`` best valid frames (all valid frames of a shorter video)."""
        s = self.scores(frames, mask, caption)
        keep = min(self.cfg.keep, s.shape[1])
        top = s.topk(keep, dim=1).indices
        kept = torch.zeros_like(s, dtype=torch.bool).scatter_(1, top, True)
        return kept if mask is None else kept & mask

    def distillation_loss(self, frames: Tensor, mask: Tensor, text: Tensor) -> Tensor:
        """KL from the language-guided target softmax_t(cos(frame_t, text) / T) to softmax_t(score_t)."""
        target = (F.normalize(frames, dim=-1) @ F.normalize(text, dim=-1).unsqueeze(-1)).squeeze(-1)
        target = torch.softmax(target.masked_fill(~mask, float("-inf")) / self.cfg.teacher_temperature, dim=1)
        log_student = torch.log_softmax(self.scorer(F.normalize(frames, dim=-1)).squeeze(-1).masked_fill(~mask, -1e4), 1)
        return -(target * log_student).sum(1).mean()


def filter_frames(selector: SalientFrameSelector, frames: Tensor, mask: Tensor, caption: Tensor | None = None,
                  batch_size: int = 4096) -> Tensor:
    """The kept-frame mask for many videos, in batches."""
    return torch.cat([selector.select(frames[i:i + batch_size], mask[i:i + batch_size],
                                      None if caption is None else caption[i:i + batch_size])
                      for i in range(0, len(frames), batch_size)]) if len(frames) else mask.clone()


def filter_feature_set(selector: SalientFrameSelector, data):
    """A copy of a `ml.training.data.FeatureSet` whose frame mask keeps only the salient frames."""
    kept = filter_frames(selector, data.video_frames, data.video_frame_mask, data.video_caption)
    return replace(data, video_frame_mask=kept)


def kept_kind_share(kept: Tensor, kinds: list[list[str]], kind: str = "product") -> dict[str, float]:
    """Share of kept frames of ``kind`` vs. its share among all frames (the base rate), in percent.

    ``kinds[i][t]`` is what frame t of video i shows (generated data records it).
    """
    is_kind = torch.zeros_like(kept)
    valid = torch.zeros_like(kept)
    for i, row in enumerate(kinds):
        valid[i, : len(row)] = True
        is_kind[i, : len(row)] = torch.tensor([k == kind for k in row])
    kept = kept & valid
    return {
        "kept_share": 100.0 * float((kept & is_kind).sum()) / max(1, int(kept.sum())),
        "base_rate": 100.0 * float(is_kind.sum()) / max(1, int(valid.sum())),
        "videos_without_kind_kept": 100.0 * float(((kept & is_kind).sum(1) == 0).sum()) / max(1, len(kinds)),
    }
