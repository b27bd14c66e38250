"""torch's intra-op thread count for one piece of work, the caller's own given back after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch at ``count`` intra-op threads and restore the count it found. The count is the
    process's: one left behind changes the summation order, and so the last bits, of everything run after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
