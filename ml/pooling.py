"""Pooling of a padded set of per-frame (or per-photo) features into one vector per instance.

Every pooling maps ``x [B, T, D]`` plus an optional validity mask ``[B, T]`` (True = real
frame, False = padding) to ``[B, out_dim]``. New poolings (a temporal transformer, attention
over frames, ...) subclass `FramePooling`, register under a name with `register_pooling`, and
are then selectable from `InstanceConfig` by that name through `create_pooling`.
"""
from __future__ import annotations

from typing import Callable

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
        if mask is None:
            return x.mean(dim=1)
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
