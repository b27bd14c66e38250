"""Order-independent sums of a tensor's values, for fingerprints that must not depend on how they were summed."""

from __future__ import annotations

import torch


def exact_sums(tensor: torch.Tensor) -> tuple[int, int]:
    """The sum and the sum of squares of the 16-bit pieces of ``tensor``'s bit patterns (8-bit for 1-byte
    dtypes), computed exactly in int64.

    Integer addition is exact, so the result is the same at any thread count and on any device, where a float
    sum changes in its last digits with the summation order. Each piece is at most 2**15 in magnitude and its
    square at most 2**30, so neither sum can overflow below 2**33 pieces. The working copies take 8 bytes per
    value for 1-, 2- and 4-byte dtypes (two int32 pieces of a float32), 16 for 8-byte ones.
    """
    data = tensor.detach().contiguous().reshape(-1)
    size = data.element_size()
    pieces = data.view(torch.int8 if size == 1 else torch.int16)
    wide = pieces.to(torch.int64 if size <= 2 else torch.int32)
    return int(wide.sum(dtype=torch.int64)), int((wide * wide).sum(dtype=torch.int64))
