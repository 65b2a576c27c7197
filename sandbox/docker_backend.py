"""The docker backend: each kernel in its own container, with no network, as a non-root uid, with limits.

This module owns the container of each kernel: its configuration (``container_config``, a pure
function of the settings and the kernel's spec), its start, its death and its removal, and the
removal of containers that a crashed host process left behind (``DockerLauncher.remove_orphans``).
The Jupyter protocol is ``sandbox.kernel``'s: the host reaches the kernel through the ipc sockets
in ``spec.conn_dir``, bind-mounted read-write at the same path, so the container needs no network.

Layers of each container:

1. network mode ``none``: a loopback and nothing else;
2. cgroup limits: memory (``memory_mb``, and as much memory+swap, so no swap), pids
   (``max_processes``), one CPU;
3. rlimits: address space (``address_space_mb``, set by the container's command, as the engine
   cannot), CPU seconds, open files, file size, no core files, processes of the kernel's uid;
4. uid ``uid_base + slot`` (the host's own uid when the host process is not root), all capabilities
   dropped, ``no-new-privileges``;
5. a read-only root filesystem; the working directory ``/tmp`` is a private tmpfs of ``workdir_mb``;
6. an environment made only of ``sandbox.local.kernel_env`` (nothing of the host's) and the
   image's ``PATH``; an init process reaps what the kernel spawns; the engine keeps at most 1 MB of
   the container's own stdout and stderr.

Engines: docker, and podman's Docker-compatible API (``podman system service``, as root; the
integration tests run against podman 4.3, see ``deploy/podman-ci.sh``), told apart by ``engine_of``.

What it does not protect against:

- the host kernel: containers share it, so a kernel exploit escapes (run the engine with a
  sandboxing runtime such as gVisor's ``runsc`` when that matters);
- the docker socket: whoever holds it (this process) is root-equivalent on the engine's host;
- the image: whatever it contains, kernel code can read and run;
- the HMAC key: the kernel can read its own connection file (it must), so the key only keeps
  other kernels and host users out;
- side channels and contention: kernels share the host's CPUs, caches and disk bandwidth;
  each may use one CPU, and ``max_kernels`` bounds how many run;
- engines that remap user namespaces (rootless docker, ``userns-remap``): the socket directory is
  chowned to the kernel's uid on the host, which such an engine maps elsewhere, so kernels do not
  start;
- a host process that is itself in a container: the socket directory is bind-mounted by its path
  on the engine's host, so ``run_dir`` must be the same path in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sandbox.errors import KernelStartError, SandboxUnavailable
from sandbox.launcher import KernelSpec
from sandbox.local import kernel_env
from sandbox.settings import SandboxSettings

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

logger = logging.getLogger(__name__)

LABEL = "mathcoder.sandbox"
"""Label on every kernel container (value ``kernel``): how orphans are found."""
SLOT_LABEL = "mathcoder.slot"

WORKDIR = "/tmp"
SHARED_UID_HEADROOM = 1024
"""Processes and threads of the host process itself, in the RLIMIT_NPROC of kernels that share its uid."""
_LOG_TAIL_CHARS = 800
SET_ADDRESS_SPACE = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); os.execvp(sys.argv[2], sys.argv[2:])"
)
"""``python -c`` code run as ``SET_ADDRESS_SPACE <bytes> <argv...>``: sets RLIMIT_AS, then execs argv.
The engine cannot set that limit (docker leaves ``as`` out of its ulimits), so the command does."""


def _sdk() -> Any:
    """The docker SDK module, or SandboxUnavailable saying how to install it."""
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable(
            "backend='docker' needs the docker SDK: pip install 'mathcoder-runtime[docker]'; "
            "or set MATHCODER_SANDBOX_BACKEND=local"
        ) from None
    return docker


Engine = Literal["docker", "podman"]
"""The engine behind the API: podman's Docker-compatible service differs in one option."""


def container_config(
    settings: SandboxSettings,
    spec: KernelSpec,
    uid: int | None = None,
    engine: Engine = "docker",
    shared_uid: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for the kernel ``spec``.

    ``uid`` defaults to ``uid_base + slot``.  The environment is ``kernel_env`` without its
    ``PATH``, which names this host's Python: the image's own ``PATH`` finds the image's ``python``.
    The working directory's tmpfs is the kernel's: docker takes its owner as ``uid=``/``gid=``
    options, which podman refuses (4.3: "unknown mount option"); podman's ``U`` chowns it to the
    container's user instead.  RLIMIT_NPROC counts a uid's processes host-wide: ``max_processes``
    when the kernel's uid is its own; when all kernels share the host process's uid (``shared_uid``)
    it bounds them all together, with ``SHARED_UID_HEADROOM`` for the host process's own threads.
    It is always set because podman's default (1048576) fails where the host denies
    CAP_SYS_RESOURCE.
    """
    s = settings
    uid = s.uid_base + spec.slot if uid is None else uid
    owner = "U" if engine == "podman" else f"uid={uid},gid={uid}"
    nproc = s.max_kernels * s.max_processes + SHARED_UID_HEADROOM if shared_uid else s.max_processes
    conn_dir = str(spec.conn_dir)
    memory = s.memory_mb << 20
    return {
        "image": s.docker_image,
        "command": [
            "python",
            "-c",
            SET_ADDRESS_SPACE,
            str(s.address_space_mb << 20),
            *spec.kernel_argv("python"),
        ],
        "user": f"{uid}:{uid}",
        "environment": {k: v for k, v in kernel_env(WORKDIR).items() if k != "PATH"},
        "working_dir": WORKDIR,
        "labels": {LABEL: "kernel", SLOT_LABEL: str(spec.slot)},
        "detach": True,
        "network_mode": "none",
        "read_only": True,
        # Owned by the kernel: the engine resets the mode of a tmpfs that is the working directory.
        "tmpfs": {WORKDIR: f"size={s.workdir_mb}m,mode=0700,{owner}"},
        # Mounted after the tmpfs (the engine mounts parents first), so it shows through /tmp.
        "volumes": {conn_dir: {"bind": conn_dir, "mode": "rw"}},
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": s.max_processes,
        "nano_cpus": round(settings.docker_cpus * 1e9),
        "ulimits": [
            {"name": "cpu", "soft": s.cpu_time_s, "hard": s.cpu_time_s},
            {"name": "nofile", "soft": s.max_open_files, "hard": s.max_open_files},
            {"name": "fsize", "soft": s.max_file_mb << 20, "hard": s.max_file_mb << 20},
            {"name": "core", "soft": 0, "hard": 0},
            {"name": "nproc", "soft": nproc, "hard": nproc},
        ],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "log_config": {"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
    }


def _in_thread(fn: Callable[[], int], name: str) -> asyncio.Future[int]:
    """Run a blocking ``fn`` (which must not raise) in its own daemon thread.

    Not ``asyncio.to_thread``: waiting on a container takes a thread for the kernel's whole life,
    and the loop's default executor has few; a pool of kernels would fill it and starve every other
    ``to_thread`` call.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def settle(value: int) -> None:
        if not future.done():
            future.set_result(value)

    def run() -> None:
        value = fn()
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


@dataclass(eq=False)
class DockerKernelProcess:
    """A kernel's container, from the host's side.  The SDK blocks: every call runs off the loop."""

    container: Container
    spec: KernelSpec
    _exit: asyncio.Future[int] | None = field(default=None, repr=False)
    _state: dict[str, Any] = field(default_factory=dict, repr=False)
    _log: str = field(default="", repr=False)
    _lost: str = field(default="", repr=False)
    _closed: bool = field(default=False, repr=False)
    _killed: bool = field(default=False, repr=False)

    @property
    def id(self) -> str:
        return str(self.container.id)

    async def wait(self) -> int:
        if self._exit is None:
            self._exit = _in_thread(self._wait_blocking, name=f"wait-{self.id[:12]}")
        return await asyncio.shield(self._exit)

    def _wait_blocking(self) -> int:
        """Block until the container exits, then keep its state and log for ``death_note``."""
        try:
            status = int(self.container.wait()["StatusCode"])
        except Exception as e:  # removed, or the engine went away: either way the kernel is lost
            self._lost = f"{type(e).__name__}: {e}"
            return -1
        self._state = {"ExitCode": status}
        with contextlib.suppress(Exception):  # a removed container has neither
            self.container.reload()
            self._state = dict(self.container.attrs.get("State", {}))
            raw = self.container.logs(stdout=True, stderr=True, tail=40)
            self._log = raw.decode(errors="replace")[-_LOG_TAIL_CHARS:].strip()
        return status

    def kill(self) -> None:
        """Send SIGKILL to the container, from a thread: this returns at once, even on the loop."""
        self._killed = True
        threading.Thread(
            target=_best_effort, args=("kill", self.container.kill), name=f"kill-{self.id[:12]}", daemon=True
        ).start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(_best_effort, "remove", self._remove)
        if self._exit is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), timeout=10)
        shutil.rmtree(self.spec.conn_dir, ignore_errors=True)

    def _remove(self) -> None:
        self.container.remove(force=True)  # kills it first

    def lost_reason(self) -> str | None:
        """Only what is certain: the sandbox's own shutdown, or a container the engine lost.  A
        SIGKILL we did not send is read as the memory limit (see ``death_note``): the code's outcome."""
        if self._closed:
            return "the sandbox shut the kernel down"
        if self._lost:
            return f"lost track of the kernel's container ({self._lost})"
        return None

    def death_note(self) -> str:
        if self._state.get("OOMKilled"):
            return "the kernel was killed for exceeding its memory limit"
        if self._lost:
            return f"lost track of the kernel's container ({self._lost})"
        code = self._state.get("ExitCode")
        if isinstance(code, int) and code > 128:
            with contextlib.suppress(ValueError):
                sig = signal.Signals(code - 128)
                if sig == signal.SIGXCPU:
                    return "the kernel was killed for exceeding its CPU time limit"
                if sig == signal.SIGKILL and not self._killed and not self._closed:
                    # Not our kill: the engine's OOM killer, though some engines do not say so
                    # (podman 4.3 on cgroup v1 reports OOMKilled false).
                    return (
                        "the kernel was killed (SIGKILL, not by the sandbox), most likely for exceeding "
                        "its memory limit"
                    )
                return f"the kernel died from signal {sig.name}"
        if code is None:
            return "the kernel's container is still running"
        return f"the kernel exited with status {code}" + (f": {self._log}" if self._log else "")


class DockerLauncher:
    """Starts each kernel in its own container on the engine that ``DOCKER_HOST`` names.

    The image (``docker_image``) must have ``python`` with ``ipykernel`` on its ``PATH``.
    Construction checks that the docker SDK is installed and does no I/O; the engine is first
    reached by ``launch`` (or ``connect``), which raise ``SandboxUnavailable`` when none answers.
    """

    def __init__(
        self, settings: SandboxSettings, client: DockerClient | None = None, engine: Engine | None = None
    ) -> None:
        if client is None:
            _sdk()
        self.settings = settings
        self.privileged = os.geteuid() == 0
        self._client = client
        self._engine = engine
        self._lock = threading.Lock()
        self._processes: weakref.WeakSet[DockerKernelProcess] = weakref.WeakSet()
        settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": "docker",
            "image": s.docker_image,
            "network": "none",
            "unprivileged_uid": True,
            "read_only_root": True,
            "capabilities": "none",
            "no_new_privileges": True,
            "memory_mb": s.memory_mb,
            "address_space_mb": s.address_space_mb,
            "max_processes": s.max_processes,
            "cpus": self.settings.docker_cpus,
            "workdir_mb": s.workdir_mb,
        }

    def uid(self, slot: int) -> int:
        """The kernel's uid: its own when this process may chown the socket directory, else ours."""
        return self.settings.uid_base + slot if self.privileged else os.getuid()

    def connect(self) -> DockerClient:
        """The engine's client, connected on first use.  Blocking: call it off the event loop."""
        with self._lock:
            if self._client is None:
                docker = _sdk()
                client = None
                try:
                    client = docker.from_env(max_pool_size=self.settings.max_kernels + 4)
                    client.ping()
                except (docker.errors.DockerException, OSError) as e:
                    if client is not None:
                        client.close()
                    message = _no_engine(e)
                    _drop_frames(e)
                    raise SandboxUnavailable(message) from None
                self._client = client
            if self._engine is None:
                self._engine = engine_of(self._client)
            return self._client

    @property
    def engine(self) -> Engine:
        """The engine's kind, known once connected (``docker`` until then)."""
        return self._engine or "docker"

    async def launch(self, spec: KernelSpec) -> DockerKernelProcess:
        client = await asyncio.to_thread(self.connect)
        uid = self.uid(spec.slot)
        if self.privileged:
            os.chown(spec.conn_dir, uid, uid)
            os.chown(spec.conn_file, uid, uid)
        config = container_config(
            self.settings, spec, uid=uid, engine=self.engine, shared_uid=not self.privileged
        )
        started = asyncio.ensure_future(asyncio.to_thread(self._start, client, config))
        try:
            container = await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(_discard)  # the container may yet start: remove it then
            raise
        process = DockerKernelProcess(container=container, spec=spec)
        self._processes.add(process)
        return process

    def _start(self, client: DockerClient, config: dict[str, Any]) -> Container:
        docker = _sdk()
        try:
            container = client.containers.create(**config)
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(
                f"docker image {config['image']!r} is not on the engine; build or pull it, or set "
                "MATHCODER_SANDBOX_DOCKER_IMAGE to an image with python and ipykernel"
            ) from None
        except docker.errors.APIError as e:
            raise KernelStartError(f"the docker engine refused the kernel's container: {e}") from e
        except (docker.errors.DockerException, OSError) as e:
            raise SandboxUnavailable(_no_engine(e)) from e
        try:
            container.start()
        except (docker.errors.DockerException, OSError) as e:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                container.remove(force=True)
            raise KernelStartError(f"the kernel's container did not start: {e}") from e
        return container

    async def remove_orphans(self) -> int:
        """Remove every kernel container on the engine but this launcher's own; how many.

        Meant for start-up, after a crash left containers behind: it also removes the kernels of
        any other process that uses the same engine.
        """
        return await asyncio.to_thread(self._remove_orphans_blocking)

    def _remove_orphans_blocking(self) -> int:
        client = self.connect()
        own = {p.id for p in self._processes}
        orphans = [
            container
            for container in client.containers.list(all=True, filters={"label": f"{LABEL}=kernel"})
            if container.id not in own
        ]
        removed = sum(_best_effort("remove", functools.partial(c.remove, force=True)) for c in orphans)
        if removed:
            logger.info("removed %d orphaned kernel containers", removed)
        return removed


def engine_of(client: Any) -> Engine:
    """``podman`` when the engine says it is Podman's (its version lists a "Podman Engine"
    component), else ``docker``; also ``docker`` when it does not say."""
    try:
        components = client.version().get("Components") or []
    except Exception:
        return "docker"
    names = {str(c.get("Name", "")) for c in components if isinstance(c, dict)}
    return "podman" if "Podman Engine" in names else "docker"


def _discard(started: asyncio.Future[Container]) -> None:
    """Remove a container whose launch was cancelled, once its start has finished."""
    if started.cancelled() or started.exception() is not None:
        return
    remove = functools.partial(started.result().remove, force=True)
    threading.Thread(target=_best_effort, args=("remove", remove), daemon=True).start()


def _best_effort(action: str, call: Callable[[], object]) -> bool:
    """Run a kill or a remove; False, logged, when it failed, unless the container was already gone
    (404) or stopped (409).  Needs no SDK import: engine errors are told by their status code."""
    try:
        call()
    except Exception as e:
        if getattr(e, "status_code", None) not in (404, 409):
            logger.warning("could not %s a kernel container (remove_orphans() will): %s", action, e)
        return False
    return True


def _drop_frames(error: BaseException) -> None:
    """Free what a failed connection attempt holds: the SDK leaves the socket that failed to connect
    open in its frames (docker.transport.unixconn), to warn about it whenever it is collected."""
    seen: set[int] = set()
    chained: BaseException | None = error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        while chained is not None and id(chained) not in seen:
            seen.add(id(chained))
            traceback.clear_frames(chained.__traceback__)
            chained = chained.__cause__ or chained.__context__


def _no_engine(error: BaseException) -> str:
    where = os.environ.get("DOCKER_HOST") or "the default socket or docker context"
    return (
        f"backend='docker' needs a docker engine and none answered at {where} ({error}); "
        "start one or point DOCKER_HOST at it, or set MATHCODER_SANDBOX_BACKEND=local"
    )
