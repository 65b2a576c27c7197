"""The drivers of a resumable batch: items with ids in, one record per item in a ``RunFolder``.

Both drivers keep the folder's contract the same way: the config is written or checked, the items
a previous run finished are skipped (and must all still be among the items), each new record is
appended (fsynced) as it arrives, and at the end the records are rewritten in item order.
``drive_local`` takes the records from an async iterator in this process; ``drive_ray`` shards the
items over Ray actors (each with its own model replica or teacher, and its own sandbox pool) in
chunks, and this process alone writes the folder.  What is run per item is the caller's: the
harness solves problems, data generation runs a mode over seeds.

Ray is optional (``pip install ray``) and imported only when a Ray run starts.  Workers import this
package, so on a multi-node cluster every node needs the project installed (or a Ray
``runtime_env``); the driver sends items, not data files.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from runtime.backends.factory import BackendSpec
from runtime.batch.folder import RunError, RunFolder
from sandbox.settings import SandboxSettings

__all__ = [
    "IN_PROCESS_MODELS",
    "Driven",
    "check_ids",
    "dispatch",
    "drive_local",
    "drive_ray",
    "import_ray",
    "start_actors",
    "worker_sandbox",
]

R = TypeVar("R", bound=BaseModel)


class HasId(Protocol):
    @property
    def id(self) -> str: ...

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


ItemT = TypeVar("ItemT", bound=HasId)


class Bar(Protocol):
    """A progress display: told of every record as it lands."""

    def update(self, record: Any) -> None: ...


ProgressFactory = Callable[[int, list[R]], AbstractContextManager[Bar]]
"""``progress(total, already_done)``: the display of one run."""


@dataclass
class Driven(Generic[R]):
    """What a driver leaves: every record in item order, which ids this run produced, how many it resumed."""

    records: list[R]
    fresh: set[str] = field(default_factory=set)
    resumed: int = 0


def check_ids(items: Sequence[HasId], done: Mapping[str, object], out_dir: Path) -> None:
    """Unique ids, and no finished record for an item that is not in this run."""
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise RunError("the problems have duplicate ids; give each problem a unique id")
    stray = sorted(set(done) - set(ids))
    if stray:
        raise RunError(
            f"{out_dir} has records for problems not in this run (e.g. {stray[0]!r}); the data changed"
        )


async def drive_local(
    folder: RunFolder[Any, R],
    config: BaseModel,
    items: Sequence[ItemT],
    results: Callable[[list[ItemT]], AsyncIterator[R]],
    progress: ProgressFactory[R],
) -> Driven[R]:
    """The records ``results(todo)`` yields for the items not yet done, into ``folder``."""
    done = folder.prepare(config)
    check_ids(items, done, folder.out_dir)
    driven: Driven[R] = Driven(records=[], resumed=len(done))
    todo = [item for item in items if item.id not in done]
    with progress(len(items), list(done.values())) as bar:
        async for record in results(todo):
            await asyncio.to_thread(folder.append, record)
            ident = getattr(record, "id")  # noqa: B009 - records are pydantic models with an id
            done[ident] = record
            driven.fresh.add(ident)
            bar.update(record)
    driven.records = [done[item.id] for item in items]
    await asyncio.to_thread(folder.finalize, driven.records)
    return driven


def drive_ray(
    folder: RunFolder[Any, R],
    config: BaseModel,
    items: Sequence[ItemT],
    *,
    worker: type,
    backend: BackendSpec | None,
    chunk_size: int,
    progress: ProgressFactory[R],
    address: str = "auto",
    workers: int | None = None,
    sandbox: SandboxSettings | None = None,
) -> Driven[R]:
    """``drive_local`` with the items sharded over Ray actors of ``worker`` (built from the backend
    spec, the config and a sandbox of their own; ``run(chunk) -> records`` and ``close()``).
    ``address``: a cluster address, ``auto`` (the running cluster) or ``local`` (start one here);
    ignored when Ray is already initialised.  ``workers``: actors to start (default: one per GPU of
    the cluster for an in-process model, else one per CPU; at most one per chunk)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    done = folder.prepare(config)
    check_ids(items, done, folder.out_dir)
    driven: Driven[R] = Driven(records=[], resumed=len(done))
    todo = [item for item in items if item.id not in done]
    size = max(1, chunk_size)
    chunks = deque(
        [item.model_dump(mode="json") for item in todo[i : i + size]] for i in range(0, len(todo), size)
    )
    base = sandbox or SandboxSettings()
    actors = start_actors(
        ray,
        worker,
        backend,
        workers,
        len(chunks),
        lambda i: (backend, config.model_dump(), worker_sandbox(base, i, size).model_dump(mode="json")),
    )
    with progress(len(items), list(done.values())) as bar:

        def handle(raw: dict[str, Any]) -> None:
            record = folder.record_type.model_validate(raw)
            folder.append(record)
            ident = getattr(record, "id")  # noqa: B009 - records are pydantic models with an id
            done[ident] = record
            driven.fresh.add(ident)
            bar.update(record)

        dispatch(ray, actors, chunks, handle)
    driven.records = [done[item.id] for item in items]
    folder.finalize(driven.records)
    return driven


def worker_sandbox(base: SandboxSettings, index: int, concurrency: int) -> SandboxSettings:
    """Worker ``index``'s sandbox settings: its own kernel uids and socket folder, so pools on one
    host never share a uid (NPROC is counted per uid)."""
    return base.model_copy(
        update={
            "uid_base": base.uid_base + (index + 1) * base.max_kernels,
            "run_dir": base.run_dir / f"ray-worker-{index}",
            "pool_size": min(base.pool_size, concurrency),
        }
    )


def import_ray() -> ModuleType:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RuntimeError(
            "--ray needs Ray: pip install ray (or leave out --ray for a single process)"
        ) from exc


def dispatch(
    ray: ModuleType, actors: list[Any], chunks: deque[list[Any]], handle: Callable[[Any], None]
) -> None:
    """Feed ``chunks`` to ``actors`` (each has ``run(chunk) -> results`` and ``close()``), two in flight
    per actor so none idles between chunks; ``handle`` each result on this thread as chunks finish.
    On any error, or when done, cancel what is in flight and close and kill every actor."""
    inflight: dict[Any, Any] = {}

    def submit(actor: Any) -> None:
        if chunks:
            inflight[actor.run.remote(chunks.popleft())] = actor

    try:
        for actor in actors:
            submit(actor)
            submit(actor)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor = inflight.pop(ref)
                for raw in ray.get(ref):
                    handle(raw)
                submit(actor)
    finally:
        for ref in inflight:
            ray.cancel(ref, force=False)
        for actor in actors:
            with contextlib.suppress(Exception):  # a dead worker has nothing left to close
                ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor)


# Backends whose model lives in the actor's own process (one replica per actor).
IN_PROCESS_MODELS = frozenset({"auto", "transformers", "vllm"})  # auto is transformers on a GPU


def start_actors(
    ray: ModuleType,
    cls: type,
    backend: BackendSpec | None,
    workers: int | None,
    chunks: int,
    make_args: Callable[[int], tuple[Any, ...]],
) -> list[Any]:
    """Ray actors of ``cls``, actor ``i`` built from ``make_args(i)``, at most one per chunk.

    An actor that holds a model replica on a cluster with GPUs asks for a whole GPU, so Ray places
    one replica per GPU (and starts one actor per GPU by default); otherwise each asks for one CPU
    (one per CPU by default): a model behind a URL, or none, leaves the actors only kernels to run."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and backend is not None and backend.kind in IN_PROCESS_MODELS:
        count, options = workers or gpus, {"num_cpus": 1, "num_gpus": 1}
    else:
        count, options = workers or int(resources.get("CPU", 1)), {"num_cpus": 1}
    remote = ray.remote(**options)(cls)
    return [remote.remote(*make_args(i)) for i in range(max(1, min(count, chunks)))]
