"""One padding helper: variable-length sets of feature rows (frames, photos, word tokens) -> one batch."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.functional import pad
from torch.nn.utils.rnn import pad_sequence


def pad_groups(groups: Sequence, dim: int | None = None, masks: Sequence[Tensor] | None = None,
               dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Groups of [n_i, D] rows (tensors or arrays) -> ([N, max n, D], mask [N, max n], True = real row).

    ``masks`` gives each group's own row mask (default: all its rows are real); ``dim`` is needed only
    when ``groups`` may be empty; ``dtype`` defaults to the first group's. At least one slot per row.
    Padding is one native call (a lookup pads its candidates' features on every request).
    """
    groups = [torch.as_tensor(g) for g in groups]
    if not groups:
        return torch.zeros(0, 1, dim or 0, dtype=dtype or torch.float32), torch.zeros(0, 1, dtype=torch.bool)
    dtype = dtype or groups[0].dtype
    groups = [g if g.dtype == dtype else g.to(dtype) for g in groups]
    out = pad_sequence(groups, batch_first=True)
    if masks is None:
        lengths = torch.tensor([len(g) for g in groups])
        mask = torch.arange(out.shape[1]) < lengths[:, None]
    else:
        mask = pad_sequence([torch.as_tensor(m, dtype=torch.bool) for m in masks], batch_first=True)
    if out.shape[1] == 0:  # every group empty
        out, mask = pad(out, (0, 0, 0, 1)), pad(mask, (0, 1))
    return out, mask
