"""Peak memory of a block of torch work, measured the same way on every device.

On CUDA it is the caching allocator's own count (``max_memory_allocated`` above what was allocated at the
start). On the CPU torch keeps no such count, so :class:`LiveTensorBytes` keeps it: a dispatch mode that sees
every tensor an operator returns, counts its storage once (views share it) and uncounts it when the last
tensor on it is freed. Both count tensor storage only; kernel workspaces and the process's other memory are
not in it (``peak_rss_mib`` reports the process as a whole).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive; ``peak`` is the most at any time.

    Each new storage an operator returns is held (one reference) and counted; before every operator the held
    storages that nothing else references any more are dropped and uncounted. A storage that outlives the
    tensor it came in (``param.data = new``, as ``module.to(dtype)`` does) stays counted, as it stays in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, torch.UntypedStorage] = {}
        self.current = 0
        self.peak = 0

    def sweep(self) -> None:
        """Drop the storages only this probe still references."""
        for pointer, storage in list(self.held.items()):
            if torch._C._storage_Use_Count(storage._cdata) <= 1:
                del self.held[pointer]
                self.current -= storage.nbytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.sweep()
        given = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in given if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            pointer = storage.data_ptr()
            if pointer == 0 or pointer in self.held or pointer in inputs:
                continue  # empty, already counted, or a view of a tensor made outside (weights, inputs)
            self.held[pointer] = storage
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        return out

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.held.clear()  # release the probe's references


@dataclass
class Peak:
    """Filled in when the :func:`peak_memory` block ends."""

    bytes: int = 0

    @property
    def mib(self) -> float:
        """The peak in MiB."""
        return self.bytes / 2**20


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Peak]:
    """Measure the peak tensor memory the block allocates on ``device`` (above what it held at the start)."""
    result = Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        return
    probe = LiveTensorBytes()
    with probe:
        yield result
    result.bytes = probe.peak


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
