"""Run a sweep's items as Ray tasks (``--ray [ADDRESS]``); Ray is an optional extra: ``pip install "diffloc[ray]"``.

Each worker is a Ray actor that loads the model and scorer itself from a :class:`WorkerSetup` (source string,
load options, expected weights), holds one GPU when the cluster has GPUs (else one CPU), and computes one
item at a time, writing it atomically to the sweep's directory, which must be on a filesystem every node
shares. The caller then reads the items back from that directory, so resuming works as in one process. A
worker that dies is restarted and its item retried; items already written are never recomputed.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffloc.errors import ConfigError, DifflocError
from diffloc.tracing.executors import WorkerSetup, check_same_weights
from diffloc.tracing.store import ItemFn, ItemStore

if TYPE_CHECKING:
    from diffloc.models.base import LoadedModel
    from diffloc.scoring import Scorer
    from diffloc.tracing.store import PendingJob

logger = logging.getLogger(__name__)

#: how often a dead worker is restarted (and its item retried) before the sweep gives up
RESTARTS = 3
INSTALL_HINT = 'pip install "diffloc[ray]"'


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        DifflocError: Ray is not installed (names the extra to install).
    """
    try:
        import ray
    except ImportError:
        raise DifflocError(f"--ray needs Ray, which is not installed here; install it with {INSTALL_HINT}") from None
    return ray


def _ignore(_: int) -> None:
    return None


def _quiet_worker() -> None:
    """No library progress bars or notices from workers: Ray forwards their output to the caller's terminal."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


class SweepWorker:
    """A Ray actor: loads the model and scorer of a :class:`WorkerSetup` on first use and computes items."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.model: LoadedModel | None = None
        self.scorer: Scorer | None = None

    def _ready(self) -> tuple[LoadedModel, Scorer]:
        if self.model is None or self.scorer is None:
            import ray

            _quiet_worker()
            model = self.setup.model.load("cuda" if ray.get_gpu_ids() else "cpu")
            check_same_weights(model, self.setup.weights)
            self.model, self.scorer = model, self.setup.scorer()
        return self.model, self.scorer

    def compute(self, out: str, key: str, compute: ItemFn) -> str:
        """Compute one item and write it to the store under ``out``; returns its key."""
        model, scorer = self._ready()
        ItemStore(out).put(key, compute(model=model, scorer=scorer, advance=_ignore))
        return key


class RayExecutor:
    """Distribute a sweep's missing items over Ray workers (one GPU each when the cluster has GPUs).

    Args:
        address: the cluster to join (``ray.init(address=...)``: ``"auto"``, ``"ray://head:10001"`` …); ``None``
            joins a cluster started on this machine with ``ray start``, else starts a local one. Ignored when
            Ray is already initialized in this process.
        workers: most workers (default: one per GPU of the cluster, else one per CPU).

    Workers stay up across the sweeps of one executor with the same model and scorer (a demo's traces and
    LocoGen load the model once per worker); :meth:`close` (or leaving a ``with`` block) stops them.

    Raises:
        DifflocError: Ray is not installed.
    """

    needs_directory = True

    def __init__(self, address: str | None = None, *, workers: int | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"Ray workers must be an integer >= 1, got {workers!r}")
        self._ray = import_ray()
        self.address = address
        self.workers = workers
        self._started = False
        self._pool_key: bytes | None = None
        self._actors: list[Any] = []

    def describe(self) -> str:
        """``"Ray"`` and the address."""
        return f"Ray ({self.address or 'local'})"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers, and the local Ray instance if this executor started it."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors, self._pool_key = [], None
        if self._started:
            self._ray.shutdown()
            self._started = False

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, include_dashboard=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise DifflocError(
                f"cannot join the Ray cluster at {self.address or 'this machine'!r}: {type(exc).__name__}: {first}"
            ) from None
        self._started = True

    def _pool(self, setup: WorkerSetup, needed: int) -> list[Any]:
        """Workers for ``setup`` (reused while the setup is unchanged), at most ``needed`` new ones started."""
        ray = self._ray
        key = ray.cloudpickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        if key != self._pool_key:
            for actor in self._actors:
                ray.kill(actor)
            self._actors, self._pool_key = [], key
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        limit = self.workers or gpus or max(1, int(resources.get("CPU", 1)))
        worker = ray.remote(SweepWorker).options(
            num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=RESTARTS, max_task_retries=RESTARTS
        )
        while len(self._actors) < min(limit, needed):
            self._actors.append(worker.remote(setup))
        return self._actors[: min(limit, needed)]

    def run(
        self,
        pending: Sequence[PendingJob],
        *,
        store: ItemStore,
        model: LoadedModel,
        scorer: Scorer,
        advance: Callable[[int], None],
    ) -> set[str]:
        """Compute every pending item on the workers; returns the keys they wrote."""
        if store.directory is None:
            raise ConfigError("Ray workers write items to a shared output directory; give one (--out)")
        self._connect()
        actors = self._pool(WorkerSetup.of(model, scorer), len(pending))
        out = str(Path(store.directory).parent.resolve())
        queue = list(pending)
        inflight: dict[Any, tuple[Any, PendingJob]] = {}

        def submit(actor: Any) -> None:
            entry = queue.pop(0)
            inflight[actor.compute.remote(out, entry.key, entry.job.compute)] = (actor, entry)

        for actor in actors:
            if queue:
                submit(actor)
        done: set[str] = set()
        while inflight:
            ready, _ = self._ray.wait(list(inflight), num_returns=1)
            actor, entry = inflight.pop(ready[0])
            self._get(ready[0], out)
            if store.get(entry.key) is None:
                raise DifflocError(
                    f"a Ray worker wrote item {entry.key} under {out!r} but this process cannot read it there: the "
                    "output directory must be on a filesystem every Ray node shares"
                )
            done.add(entry.key)
            advance(entry.job.runs)
            if queue:
                submit(actor)
        return done

    def _get(self, ref: Any, out: str) -> None:
        """Wait for one item, turning Ray's errors into one-line ones."""
        exceptions = self._ray.exceptions
        try:
            self._ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DifflocError):
                raise cause.with_traceback(None) from None
            first = (str(cause or exc).strip().splitlines() or [""])[0]
            name = type(cause).__name__ if cause is not None else "RayTaskError"
            raise DifflocError(f"a Ray worker failed: {name}: {first}") from None
        except exceptions.RayActorError:
            raise DifflocError(
                f"a Ray worker died {RESTARTS + 1} times (out of memory?); the finished items are kept in {out!r}: "
                "rerun the same command to resume"
            ) from None
