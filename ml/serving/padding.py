"""One padding helper: variable-length sets of feature rows (frames, photos, word tokens) -> one batch."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_groups(groups: Sequence, dim: int | None = None, masks: Sequence[Tensor] | None = None,
               dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Groups of [n_i, D] rows (tensors or arrays) -> ([N, max n, D], mask [N, max n], True = real row).

    ``masks`` gives each group's own row mask (default: all its rows are real); ``dim`` is needed only
    when ``groups`` may be empty; ``dtype`` defaults to the first group's. At least one slot per row.
    """
    groups = [torch.as_tensor(g) for g in groups]
    dim = groups[0].shape[-1] if dim is None else dim
    dtype = dtype or (groups[0].dtype if groups else torch.float32)
    longest = max((len(g) for g in groups), default=0) or 1
    out = torch.zeros(len(groups), longest, dim, dtype=dtype)
    mask = torch.zeros(len(groups), longest, dtype=torch.bool)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
        mask[i, : len(g)] = True if masks is None else masks[i]
    return out, mask
