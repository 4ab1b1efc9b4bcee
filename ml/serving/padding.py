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
    A fixed number of native calls (a lookup pads its candidates' features on every request).
    """
    groups = [torch.as_tensor(g) for g in groups]
    if not groups:
        return torch.zeros(0, 1, dim or 0, dtype=dtype or torch.float32), torch.zeros(0, 1, dtype=torch.bool)
    dtype = dtype or groups[0].dtype
    groups = [g if g.dtype == dtype else g.to(dtype) for g in groups]
    masks = None if masks is None else [torch.as_tensor(m, dtype=torch.bool) for m in masks]
    lengths = [len(g) for g in groups]
    longest = max(lengths)
    if longest == min(lengths) > 0:  # equal lengths (a lookup's candidates mostly are): one stack
        return torch.stack(groups), torch.stack(masks) if masks else torch.ones(len(groups), longest, dtype=torch.bool)
    # Scatter the rows of all groups into a zero batch: a fixed number of native calls, whatever the count.
    counts = torch.tensor(lengths)
    rows = torch.repeat_interleave(torch.arange(len(groups)), counts)
    cols = torch.arange(len(rows)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    width = max(longest, 1)  # at least one slot per row
    out = groups[0].new_zeros(len(groups), width, *groups[0].shape[1:])
    out[rows, cols] = torch.cat(groups)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    mask[rows, cols] = torch.cat(masks) if masks else True
    return out, mask
