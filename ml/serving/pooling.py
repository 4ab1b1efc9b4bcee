"""Pooling of a padded set of per-frame (or per-photo) features into one vector per instance.

Every pooling maps ``x [B, T, D]`` plus an optional validity mask ``[B, T]`` (True = real
frame, False = padding) to ``[B, out_dim]``. New poolings (a temporal transformer, attention
over frames, ...) subclass `FramePooling`, register under a name with `register_pooling`, and
are then selectable from `InstanceConfig` by that name through `create_pooling`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FramePooling(nn.Module):
    """Base class: ``forward(x [B, T, D], mask [B, T] | None) -> [B, out_dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    @property
    def out_dim(self) -> int:
        return self.dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


_POOLINGS: dict[str, type[FramePooling]] = {}


def register_pooling(name: str) -> Callable[[type[FramePooling]], type[FramePooling]]:
    def register(cls: type[FramePooling]) -> type[FramePooling]:
        if name in _POOLINGS:
            raise ValueError(f"pooling {name!r} is already registered")
        _POOLINGS[name] = cls
        return cls

    return register


def available_poolings() -> list[str]:
    return sorted(_POOLINGS)


def create_pooling(name: str, dim: int) -> FramePooling:
    try:
        cls = _POOLINGS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; available: {', '.join(available_poolings())}") from None
    return cls(dim)


@register_pooling("mean")
class MeanPooling(FramePooling):
    """Masked mean over the valid frames (CLIP4Clip meanP). An instance with no valid frame pools to zeros."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_mean(x, mask)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over axis 1 of the rows where ``mask`` is True (all rows when None); zeros where none is."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over the True entries of ``mask``; an all-False slice gives zeros (not NaN)."""
    return torch.nan_to_num(torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=dim))


def attention_padding(mask: Tensor | None) -> Tensor | None:
    """``src_key_padding_mask`` for nn.Transformer* (True = ignore); an instance with no valid frame
    attends to all of them (its output is masked away later) instead of producing NaNs."""
    if mask is None:
        return None
    return ~mask & mask.any(dim=1, keepdim=True)


@register_pooling("seq_transformer")
class SeqTransformerPooling(FramePooling):
    """CLIP4Clip seqTransf: frames + learned position embeddings through a small transformer, added
    back to the input frames (residual), then the masked mean. The only order-aware pooling here."""

    max_frames = 64

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__(dim)
        self.position = nn.Parameter(torch.zeros(self.max_frames, dim))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.transformer(x + self.position[: x.shape[1]], src_key_padding_mask=attention_padding(mask))
        return masked_mean(x + h, mask)


@register_pooling("hierarchical")
class HierarchicalPooling(FramePooling):
    """HCMI-style frames -> clips -> video.

    Self-attention over the frames lets correlated frames see each other; each frame is then softly
    assigned to one of ``clips`` learned cluster centres, a clip is the assignment-weighted mean of
    its frames, and the video is an attention pooling over the non-empty clips (a learned query).
    Noise frames (black, logos, unrelated scenes) tend to gather in clips of their own, which the
    query learns to down-weight. HCMI clusters tokens with DPC-KNN; learned centres keep it
    differentiable and batched.
    """

    def __init__(self, dim: int, clips: int = 4, heads: int = 4, dropout: float = 0.1):
        super().__init__(dim)
        self.frame_attention = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True,
                                                          norm_first=True)
        self.centres = nn.Parameter(torch.randn(clips, dim) / dim**0.5)
        self.query = nn.Parameter(torch.zeros(dim))  # zeros: uniform over clips at the start
        self.scale = dim**-0.5

    def clip_assignment(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(attended frames [B, T, D], soft assignment of frames to clips [B, T, C]; padding rows are 0)."""
        h = self.frame_attention(x, src_key_padding_mask=attention_padding(mask))
        assign = torch.softmax(F.normalize(h, dim=-1) @ F.normalize(self.centres, dim=-1).T / 0.1, dim=-1)
        if mask is not None:
            assign = assign * mask.unsqueeze(-1).to(assign.dtype)
        return h, assign

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h, assign = self.clip_assignment(x, mask)
        mass = assign.sum(dim=1)  # [B, C] frames per clip
        clips = assign.transpose(1, 2) @ h / mass.clamp(min=1e-6).unsqueeze(-1)  # [B, C, D]
        logits = (clips @ self.query) * self.scale
        weights = masked_softmax(logits, mass >= 1e-3, -1)  # empty clips do not count
        return (weights.unsqueeze(-1) * clips).sum(dim=1)
