import numpy as np
import torch

from ml.serving.padding import pad_groups


def test_groups_are_padded_with_zeros_and_masked():
    a, b = torch.ones(2, 3, dtype=torch.float16), np.full((1, 3), 2.0, dtype=np.float32)
    out, mask = pad_groups([a, b, torch.zeros(0, 3)], masks=[torch.tensor([True, False]), torch.tensor([True]),
                                                             torch.zeros(0, dtype=torch.bool)], dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (3, 2, 3)
    assert out[0].eq(1).all() and out[1, 0].eq(2).all() and out[1, 1].eq(0).all() and out[2].eq(0).all()
    assert mask.tolist() == [[True, False], [True, False], [False, False]]
    out, mask = pad_groups([a, b])  # the first group's dtype; every row of a group real
    assert out.dtype == torch.float16 and mask.tolist() == [[True, True], [True, False]]


def test_one_slot_at_least_and_empty_input():
    out, mask = pad_groups([torch.zeros(0, 4)])
    assert out.shape == (1, 1, 4) and not mask.any()
    out, mask = pad_groups([], dim=4)
    assert out.shape == (0, 1, 4) and mask.shape == (0, 1)
