"""Executors: where the tasks of a batch job run (in this process, or on Dask workers).

An executor maps a top-level function over tasks and yields the results as they finish, in any
order. Every task of a batch job is idempotent (it writes its outputs atomically and its
manifest part last), so a task that runs twice, or on a worker that died, does no harm.

- :class:`InProcessExecutor`: a loop in this process (the default; no extra dependency).

Every task runs with one torch thread, whatever the executor (:func:`one_torch_thread`), so the
bytes of a task's outputs do not depend on where it ran.
- :class:`DaskExecutor`: ``dask.distributed``: an embedded ``LocalCluster`` (``workers=W``, one
  process per worker, one thread and one torch thread each) or an existing cluster
  (``scheduler="tcp://host:8786"``; it must see the same file system as this process).

``open_executor(workers=..., scheduler=...)`` picks one; ``dask[distributed]`` is imported only
then, with an install hint when missing (``pip install 'medgen[dask]'``).

Example (any top-level function of picklable arguments; results in completion order):
    >>> with open_executor() as ex:
    ...     sorted(ex.map(pow, [(2, 3), (3, 2)]))
    [8, 9]
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from medgen._internal.lazy import optional_import
from medgen.errors import ConfigError, MedgenRuntimeError

log = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "InProcessExecutor", "open_executor"]

#: seconds :class:`DaskExecutor` waits for an existing scheduler to answer
SCHEDULER_TIMEOUT_S = 5.0
#: the Dask setting of the environment of the worker processes a nanny starts
NANNY_ENVIRON = "distributed.nanny.pre-spawn-environ"


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread (the previous setting is restored after).

    Every task of every executor runs so: the bytes of some networks' outputs depend on the
    thread count (the tiny LDM's do: 1 and 2 threads give different last bits), and a Dask
    worker is one thread of one process. More cores: more workers, not more threads.
    """
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


class InProcessExecutor:
    """Runs each task in this process, one after the other, in order, with one torch thread
    (as a Dask worker does; see :func:`one_torch_thread`)."""

    kind = "in-process"
    dashboard: str | None = None

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Yield ``fn(*task)`` for each task, in order."""
        for task in tasks:
            with one_torch_thread():
                result = fn(*task)
            yield result

    def describe(self) -> dict[str, Any]:
        """What ran the tasks (for provenance)."""
        return {"kind": self.kind, "workers": 1, "torch_threads": 1}

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` on a Dask worker with one torch thread (:func:`one_torch_thread`)."""
    with one_torch_thread():
        return fn(*args)


def _scheduler_error(address: str, err: BaseException, timeout: float) -> MedgenRuntimeError:
    return MedgenRuntimeError(
        f"scheduler={address!r}: no Dask scheduler answered within {timeout:g} s "
        f"({type(err).__name__}: {' '.join(str(err).split())}). Check the address and that "
        "`dask scheduler` runs there and its port is reachable from this machine (start one "
        "with `dask scheduler --port 8786` and workers with `dask worker tcp://HOST:8786 "
        "--nthreads 1`), or pass workers=W (--workers W) for a local cluster instead."
    )


class DaskExecutor:
    """Runs tasks on ``dask.distributed`` workers (see the module docstring).

    Args:
        workers: start an embedded ``LocalCluster`` of this many worker processes (one thread
            each).
        scheduler: the address of a running scheduler (``tcp://host:8786``) instead.
        timeout: seconds to wait for ``scheduler`` to answer.
        window: tasks in flight per worker thread (the rest wait in this process, so memory
            stays flat however many tasks there are).
    """

    kind = "dask"

    def __init__(
        self,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        timeout: float = SCHEDULER_TIMEOUT_S,
        window: int = 2,
    ) -> None:
        distributed = optional_import(
            "dask.distributed",
            extra="dask",
            purpose="Running on Dask workers (workers= / --workers, scheduler= / --scheduler)",
        )
        self._distributed = distributed
        self.cluster: Any = None
        self.window = max(1, int(window))
        self.scheduler = scheduler
        dashboard = importlib.util.find_spec("bokeh") is not None
        if scheduler is not None:
            try:
                self.client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as err:
                raise _scheduler_error(scheduler, err, timeout) from err
            self.kind = "dask-scheduler"
        else:
            import dask

            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which also turns
            # off glibc's adaptive mmap threshold: every tensor of a forward pass is then a
            # fresh mmap, and torch's convolutions ran ~3x slower in a worker than in this
            # process (measured). Leave the allocator at its defaults.
            with dask.config.set({f"{NANNY_ENVIRON}.MALLOC_TRIM_THRESHOLD_": None}):
                self.cluster = distributed.LocalCluster(
                    n_workers=int(workers or 1),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0" if dashboard else None,
                    silence_logs=logging.WARNING,
                )
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.kind = "dask-local"
        self.dashboard = self.client.dashboard_link if dashboard else None

    def threads(self) -> int:
        """Worker threads of the cluster now (at least 1)."""
        info = self.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Yield ``fn(*task)`` of each task as it finishes on a worker (any order). A failed
        task cancels the others and raises its error here."""
        pending = iter(tasks)
        limit = self.window * self.threads()
        in_flight: list[Any] = []

        def submit(n: int) -> list[Any]:
            new = []
            for _ in range(n):
                task = next(pending, None)
                if task is None:
                    break
                new.append(self.client.submit(_in_worker, fn, *task, pure=False))
            in_flight.extend(new)
            return new

        first = submit(limit)
        if not first:
            return
        futures = self._distributed.as_completed(first, loop=self.client.loop)
        try:
            for fut in futures:
                in_flight.remove(fut)
                result = fut.result()
                futures.update(submit(1))
                yield result
        finally:
            for fut in in_flight:
                fut.cancel()

    def describe(self) -> dict[str, Any]:
        """What ran the tasks (for provenance)."""
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        return {
            "kind": self.kind,
            "scheduler": self.scheduler or info.get("address"),
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 1)) for w in workers.values()),
            "torch_threads": 1,
            "dashboard": self.dashboard,
            "dask": _version("dask"),
            "distributed": _version("distributed"),
        }

    def close(self) -> None:
        """Close the client (and the embedded cluster)."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def open_executor(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    timeout: float = SCHEDULER_TIMEOUT_S,
) -> InProcessExecutor | DaskExecutor:
    """The executor of ``workers`` / ``scheduler`` (neither: in-process).

    Raises:
        ConfigError: both given, or ``workers`` not a positive integer, or an empty address.
        MissingDependencyError: Dask is asked for and ``dask[distributed]`` is not installed.
        MedgenRuntimeError: ``scheduler`` does not answer within ``timeout`` seconds.
    """
    if workers is not None and scheduler is not None:
        raise ConfigError(
            "workers and scheduler are alternatives: workers=W starts a local cluster, "
            "scheduler=ADDRESS uses a running one; pass one of them."
        )
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(
            f"workers must be a positive integer (worker processes), not {workers!r}."
        )
    if scheduler is not None and not str(scheduler).strip():
        raise ConfigError(
            "scheduler must be the address of a running Dask scheduler, like tcp://host:8786."
        )
    if workers is None and scheduler is None:
        return InProcessExecutor()
    return DaskExecutor(workers=workers, scheduler=scheduler, timeout=timeout)
