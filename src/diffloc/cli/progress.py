"""Progress bars at the CLI edge (the library only takes callbacks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: ``progress(done, total)``
ProgressFn = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "step") -> Iterator[ProgressFn]:
    """A tqdm bar on stderr driven by a ``progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True)

    def update(done: int, new_total: int) -> None:
        if bar.total != new_total:
            bar.total = new_total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
