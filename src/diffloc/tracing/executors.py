"""Who computes a sweep's missing items: this process, one shard of a job array, or Ray workers.

Every executor writes each finished item atomically to the sweep's item store
(:class:`~diffloc.tracing.store.ItemStore`), so the executors mix freely: a sweep sharded over a SLURM job
array, interrupted on Ray or killed in one process resumes under any of them, and a final plain run assembles
the result from the store without recomputing anything.

A process other than the caller's (a Ray worker) never receives the caller's model or scorer: it receives a
:class:`WorkerSetup` (the model's source string and load options, and how to rebuild the scorer), loads them
itself once, and checks that its weights are the caller's before computing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffloc.errors import ConfigError, DifflocError

if TYPE_CHECKING:
    from diffloc.models.base import LoadedModel
    from diffloc.scoring import Scorer
    from diffloc.tracing.store import ItemStore, PendingJob


class Executor(Protocol):
    """Computes pending items of a sweep and puts each into the store as it finishes."""

    @property
    def needs_directory(self) -> bool:
        """Whether items must go to a directory other processes read (``out=None`` is refused)."""
        ...

    def describe(self) -> str:
        """A few words naming the executor in messages, e.g. ``"shard 0/2"``."""
        ...

    def run(
        self,
        pending: Sequence[PendingJob],
        *,
        store: ItemStore,
        model: LoadedModel,
        scorer: Scorer,
        advance: Callable[[int], None],
    ) -> set[str]:
        """Compute (some of) ``pending``, storing each item; returns the keys it computed."""
        ...


class SerialExecutor:
    """Compute every pending item in this process, one after another (the default)."""

    needs_directory = False

    def describe(self) -> str:
        """``"this process"``."""
        return "this process"

    def run(
        self,
        pending: Sequence[PendingJob],
        *,
        store: ItemStore,
        model: LoadedModel,
        scorer: Scorer,
        advance: Callable[[int], None],
    ) -> set[str]:
        """Compute and store each pending item in order."""
        done = set()
        for entry in pending:
            store.put(entry.key, entry.job.compute(model=model, scorer=scorer, advance=advance))
            done.add(entry.key)
        return done


@dataclass(frozen=True)
class ShardExecutor:
    """Compute only this shard's items: those whose position in the sweep is ``index`` modulo ``count``.

    For job arrays (SLURM ``--array=0-N``): run every shard, each with ``--shard $SLURM_ARRAY_TASK_ID/N``, then
    once without ``--shard`` to assemble the result from the store (nothing is recomputed). A shard that finds
    every other item already stored assembles the result itself.
    """

    index: int
    count: int
    needs_directory: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"shard count must be an integer >= 1, got {self.count!r}")
        if not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count} is out of range: the index runs from 0 to {self.count - 1} "
                f"(e.g. --shard 0/{self.count} … --shard {self.count - 1}/{self.count})"
            )

    def describe(self) -> str:
        """``"shard I/N"``."""
        return f"shard {self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Whether the item at ``position`` of the sweep is this shard's."""
        return position % self.count == self.index

    def run(
        self,
        pending: Sequence[PendingJob],
        *,
        store: ItemStore,
        model: LoadedModel,
        scorer: Scorer,
        advance: Callable[[int], None],
    ) -> set[str]:
        """Compute and store this shard's pending items in order."""
        mine = [entry for entry in pending if self.owns(entry.index)]
        return SerialExecutor().run(mine, store=store, model=model, scorer=scorer, advance=advance)


def parse_shard(text: str) -> ShardExecutor:
    """``"I/N"`` -> :class:`ShardExecutor` (``0 <= I < N``).

    Raises:
        ConfigError: not two integers separated by ``/``, or ``I`` outside ``0..N-1``.
    """
    index, slash, count = text.strip().partition("/")
    try:
        if not slash:
            raise ValueError
        return ShardExecutor(int(index), int(count))
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not I/N (e.g. 0/4: the first of 4 shards)") from None


# -- what a worker process needs to compute items ------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """How another process loads the caller's model: :func:`diffloc.load` of ``source`` with ``options``
    (the worker picks the device)."""

    source: str
    options: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(model: LoadedModel) -> ModelRef:
        """The reference of a loaded model.

        Raises:
            ConfigError: the model was built from a pipeline object, which another process cannot load.
        """
        if model.source == "<in-memory>":
            raise ConfigError(
                "workers in other processes load the model themselves: load it by name or path "
                "(diffloc.load('shapesworld'), a directory, a cached id), not from a pipeline object"
            )
        options = tuple(sorted((k, v) for k, v in model.load_options.items() if k != "device"))
        from diffloc.models.registry import SHIPPED_MODELS

        source = model.source
        named = source in SHIPPED_MODELS or source.startswith("tiny-")  # names diffloc.load resolves itself
        if not named and Path(source).expanduser().is_dir():
            source = str(Path(source).expanduser().resolve())  # workers do not start in the caller's directory
        return ModelRef(source, options)

    def load(self, device: str) -> LoadedModel:
        """Load the model on ``device``."""
        from diffloc.models.registry import load

        return load(self.source, device=device, **dict(self.options))


def _same(scorer: Scorer) -> Scorer:
    return scorer


def scorer_factory(scorer: Scorer) -> Callable[[], Scorer]:
    """A picklable zero-argument callable that rebuilds ``scorer`` in another process: its ``reference()`` when
    it has one (CLIP from its directory, the shipped detectors), else the scorer itself, pickled as it is.

    Raises:
        ConfigError: the scorer says it cannot be rebuilt (``reference()`` returns ``None``).
    """
    reference = getattr(scorer, "reference", None)
    if reference is None:
        return partial(_same, scorer)
    factory = reference()
    if factory is None:
        raise ConfigError(
            f"scorer {scorer.name!r} was built from objects in memory, which workers cannot rebuild; build it "
            "from files (ClipScorer.from_dir, DetectorScorer() for the shipped detectors)"
        )
    return factory


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process loads once before computing items: the model, its expected weights, the scorer."""

    model: ModelRef
    scorer: Callable[[], Scorer]
    weights: dict[str, tuple[float, float, int]]

    @staticmethod
    def of(model: LoadedModel, scorer: Scorer) -> WorkerSetup:
        """The setup that reproduces ``model`` (with its current weights) and ``scorer`` in a worker."""
        return WorkerSetup(ModelRef.of(model), scorer_factory(scorer), model.weight_sums())


def check_same_weights(model: LoadedModel, expected: dict[str, tuple[float, float, int]]) -> None:
    """Raise unless ``model``'s weights are those ``expected`` (per-parameter sums, up to summation order).

    A worker that loaded other files than the caller (another copy of a directory on a node) or the base
    weights while the caller had an edit applied would otherwise compute wrong items silently.

    Raises:
        DifflocError: naming the first parameter that differs.
    """
    found = model.weight_sums()
    if found.keys() != expected.keys():
        extra = sorted(found.keys() ^ expected.keys())[0]
        raise DifflocError(f"worker's model {model.source!r} has other parameters than the caller's (e.g. {extra})")
    for name, (total, squares, count) in expected.items():
        got_total, got_squares, got_count = found[name]
        scale = math.sqrt(max(squares, 0.0) * max(count, 1))
        if (
            got_count != count
            or abs(got_squares - squares) > 1e-6 * max(squares, 1e-30)
            or abs(got_total - total) > 1e-6 * max(scale, 1e-30)
        ):
            raise DifflocError(
                f"worker's model {model.source!r} differs from the caller's at {name}: the workers must see the "
                "same files, and a sweep of an edited model cannot run on workers (they load the saved weights)"
            )
