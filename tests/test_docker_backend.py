"""The docker backend: its container configuration, its lifecycle against a fake engine, and — where
a docker engine answers and the sandbox image is built — its protection claims against real kernels.

The integration tests use ``MATHCODER_SANDBOX_DOCKER_IMAGE`` (default ``mathcoder-sandbox:latest``,
the Dockerfile's target ``sandbox``) on the engine that ``DOCKER_HOST`` names (else docker's socket,
else podman's at /run/podman/podman.sock, which ``deploy/podman-ci.sh`` starts). They skip, saying
why, without an engine or without the image; with ``MATHCODER_TEST_DOCKER=require`` they fail
instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

from sandbox.docker_backend import (
    LABEL,
    SET_ADDRESS_SPACE,
    DockerKernelProcess,
    DockerLauncher,
    container_config,
    engine_of,
)
from sandbox.errors import SandboxUnavailable
from sandbox.kernel import Kernel
from sandbox.launcher import KernelSpec, make_spec
from sandbox.local import kernel_env
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings

SPEC = KernelSpec(
    slot=3,
    conn_dir=Path("/tmp/mathcoder-sandbox/k3-abc"),
    conn_file=Path("/tmp/mathcoder-sandbox/k3-abc/kernel.json"),
    connection={},
)

# The kernel's environment is the local backend's, less PATH (the image's own PATH finds its python).
KERNEL_ENV = {k: v for k, v in kernel_env("/tmp").items() if k != "PATH"}


def small_settings(**overrides: Any) -> SandboxSettings:
    values: dict[str, Any] = {
        "memory_mb": 512,
        "address_space_mb": 2048,
        "max_processes": 32,
        "cpu_time_s": 30,
        "max_open_files": 128,
        "max_file_mb": 8,
        "workdir_mb": 64,
        "uid_base": 63000,
        "docker_image": "example/sandbox:1",
        "run_dir": Path("/tmp/mathcoder-sandbox"),
    }
    return SandboxSettings(**{**values, **overrides})


# --- configuration ------------------------------------------------------------------------------


def test_container_config_is_exactly_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/host-user")
    monkeypatch.setenv("MATHCODER_API_KEY", "host-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "host-secret")
    assert container_config(small_settings(), SPEC) == {
        "image": "example/sandbox:1",
        "command": [
            "python",
            "-c",
            SET_ADDRESS_SPACE,
            str(2048 << 20),
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "/tmp/mathcoder-sandbox/k3-abc/kernel.json",
            "--IPKernelApp.exec_files=/tmp/mathcoder-sandbox/k3-abc/startup.py",
            "--HistoryManager.enabled=False",
        ],
        "user": "63003:63003",
        "environment": KERNEL_ENV,
        "working_dir": "/tmp",
        "labels": {"mathcoder.sandbox": "kernel", "mathcoder.slot": "3"},
        "detach": True,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": "size=64m,mode=0700,uid=63003,gid=63003"},
        "volumes": {"/tmp/mathcoder-sandbox/k3-abc": {"bind": "/tmp/mathcoder-sandbox/k3-abc", "mode": "rw"}},
        "mem_limit": 512 << 20,
        "memswap_limit": 512 << 20,
        "pids_limit": 32,
        "nano_cpus": 1_000_000_000,
        "ulimits": [
            {"name": "cpu", "soft": 30, "hard": 30},
            {"name": "nofile", "soft": 128, "hard": 128},
            {"name": "fsize", "soft": 8 << 20, "hard": 8 << 20},
            {"name": "core", "soft": 0, "hard": 0},
            {"name": "nproc", "soft": 32, "hard": 32},
        ],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "log_config": {"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
    }


def test_container_environment_has_nothing_of_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("MATHCODER")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("HOME", raising=False)
    bare = container_config(small_settings(), SPEC)["environment"]
    monkeypatch.setenv("HOME", "/home/host-user")
    monkeypatch.setenv("MATHCODER_API_KEY", "host-secret")
    monkeypatch.setenv("MATHCODER_SANDBOX_DOCKER_IMAGE", "example/sandbox:1")
    monkeypatch.setenv("OPENAI_API_KEY", "host-secret")
    env = container_config(small_settings(), SPEC)["environment"]
    assert env == bare  # nothing in it comes from this process's environment
    assert env["HOME"] == "/tmp"
    assert not [key for key in env if key.startswith("MATHCODER") or key.endswith("_API_KEY")]
    assert "PATH" not in env  # the image's own PATH finds the image's python, not this host's
    assert sys.prefix not in "".join(env.values())


def test_container_config_takes_an_explicit_uid() -> None:
    assert container_config(small_settings(), SPEC, uid=1234)["user"] == "1234:1234"


def test_a_shared_uid_bounds_all_kernels_together() -> None:
    # RLIMIT_NPROC counts every process of the uid on the host: with the server's own uid shared by
    # all kernels (a non-root server), it bounds them together; the cgroup's pids limit, each one.
    settings = small_settings(max_kernels=4)
    config = container_config(settings, SPEC, uid=1234, shared_uid=True)
    assert config["ulimits"][-1] == {"name": "nproc", "soft": 4 * 32 + 1024, "hard": 4 * 32 + 1024}
    assert config["pids_limit"] == 32


def test_podman_owns_the_working_directory_through_its_own_option() -> None:
    # podman 4.3 refuses docker's uid=/gid= tmpfs options ("unknown mount option"); U chowns it.
    config = container_config(small_settings(), SPEC, engine="podman")
    assert config["tmpfs"] == {"/tmp": "size=64m,mode=0700,U"}
    docker_config = container_config(small_settings(), SPEC)
    assert {k: v for k, v in config.items() if k != "tmpfs"} == {
        k: v for k, v in docker_config.items() if k != "tmpfs"
    }


@pytest.mark.parametrize(
    ("version", "engine"),
    [
        ({"Components": [{"Name": "Podman Engine"}, {"Name": "Conmon"}]}, "podman"),
        ({"Components": [{"Name": "Engine"}, {"Name": "containerd"}]}, "docker"),
        ({}, "docker"),
        (RuntimeError("the engine did not say"), "docker"),
    ],
)
def test_the_engine_is_told_by_its_version(version: Any, engine: str) -> None:
    class Client:
        def version(self) -> Any:
            if isinstance(version, Exception):
                raise version
            return version

    assert engine_of(Client()) == engine


def test_the_sdk_turns_the_config_into_the_intended_engine_request() -> None:
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed (extra [docker])")
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    sent: dict[str, Any] = {}

    def create_container_from_config(config: dict[str, Any], name: Any = None, platform: Any = None) -> Any:
        sent.update(config)
        return {"Id": "c0ffee"}

    client.api.create_container_from_config = create_container_from_config
    client.api.inspect_container = lambda container_id: {"Id": container_id}
    try:
        assert client.containers.create(**container_config(small_settings(), SPEC)).id == "c0ffee"
    finally:
        client.close()
    host = sent["HostConfig"]
    assert (sent["Image"], sent["User"], sent["WorkingDir"]) == ("example/sandbox:1", "63003:63003", "/tmp")
    assert sent["Cmd"][4:7] == ["python", "-m", "ipykernel_launcher"]
    assert sorted(sent["Env"]) == sorted(f"{k}={v}" for k, v in KERNEL_ENV.items())
    assert sent["Labels"] == {"mathcoder.sandbox": "kernel", "mathcoder.slot": "3"}
    assert (sent["AttachStdout"], sent["AttachStderr"]) == (False, False)
    assert host["NetworkMode"] == "none"
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (512 << 20, 512 << 20, 32)
    assert host["NanoCpus"] == 1_000_000_000
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "size=64m,mode=0700,uid=63003,gid=63003"}
    assert host["Binds"] == ["/tmp/mathcoder-sandbox/k3-abc:/tmp/mathcoder-sandbox/k3-abc:rw"]
    assert (host["CapDrop"], host["SecurityOpt"], host["Init"]) == (["ALL"], ["no-new-privileges"], True)
    assert [dict(u) for u in host["Ulimits"]] == [
        {"Name": "cpu", "Soft": 30, "Hard": 30},
        {"Name": "nofile", "Soft": 128, "Hard": 128},
        {"Name": "fsize", "Soft": 8 << 20, "Hard": 8 << 20},
        {"Name": "core", "Soft": 0, "Hard": 0},
        {"Name": "nproc", "Soft": 32, "Hard": 32},
    ]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}


def test_the_command_sets_the_address_space_limit_then_becomes_the_kernel() -> None:
    probe = "import resource; print(resource.getrlimit(resource.RLIMIT_AS))"
    out = subprocess.run(
        [sys.executable, "-c", SET_ADDRESS_SPACE, str(1536 << 20), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out == f"({1536 << 20}, {1536 << 20})\n"


def test_describe_names_the_layers(tmp_path: Path) -> None:
    layers = DockerLauncher(small_settings(run_dir=tmp_path), client=cast(Any, FakeClient())).describe()
    assert layers["backend"] == "docker"
    assert (layers["network"], layers["read_only_root"], layers["unprivileged_uid"]) == ("none", True, True)
    assert (layers["memory_mb"], layers["max_processes"], layers["cpus"]) == (512, 32, 1.0)


# --- no SDK, no engine --------------------------------------------------------------------------


def test_without_the_sdk_construction_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker -> ImportError
    with pytest.raises(SandboxUnavailable, match=r"pip install 'mathcoder-runtime\[docker\]'"):
        DockerLauncher(small_settings(run_dir=tmp_path))


async def test_without_an_engine_launch_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Construction does no I/O; the first launch reaches the engine and explains its absence."""
    pytest.importorskip("docker", reason="the docker SDK is not installed (extra [docker])")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    launcher = DockerLauncher(small_settings(run_dir=tmp_path))
    conn_dir = tmp_path / "k0"
    conn_dir.mkdir(mode=0o700)
    with pytest.raises(SandboxUnavailable) as caught:
        await launcher.launch(make_spec(0, conn_dir, output_limit=1 << 16))
    message = str(caught.value)
    assert f"unix://{tmp_path}/no-engine.sock" in message
    assert "DOCKER_HOST" in message
    assert "MATHCODER_SANDBOX_BACKEND=local" in message


# --- lifecycle against a fake engine ------------------------------------------------------------


class FakeAPIError(Exception):
    status_code = 409


class FakeContainer:
    """Blocks in ``wait`` like the SDK does, until killed, removed or ``exit``ed."""

    def __init__(self, container_id: str, labels: dict[str, str] | None = None) -> None:
        self.id = container_id
        self.labels = labels or {}
        self.attrs: dict[str, Any] = {"State": {"Running": True, "OOMKilled": False, "ExitCode": 0}}
        self.exited = threading.Event()
        self.calls: list[str] = []
        self.removed = False

    def exit(self, code: int, oom: bool = False) -> None:
        self.attrs["State"] = {"Running": False, "OOMKilled": oom, "ExitCode": code}
        self.exited.set()

    def start(self) -> None:
        self.calls.append("start")

    def wait(self) -> dict[str, int]:
        self.exited.wait()
        return {"StatusCode": self.attrs["State"]["ExitCode"]}

    def reload(self) -> None:
        if self.removed:
            raise LookupError("removed")

    def logs(self, **_: Any) -> bytes:
        return b"Traceback ...\nModuleNotFoundError: No module named 'ipykernel'\n"

    def kill(self) -> None:
        self.calls.append("kill")
        self.exit(137)

    def remove(self, force: bool = False) -> None:
        self.calls.append(f"remove(force={force})")
        if not self.exited.is_set():
            self.exit(137)
        self.removed = True


class FakeContainers:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.all: list[FakeContainer] = []
        self.gate: threading.Event | None = None  # when set, create waits for it

    def create(self, **config: Any) -> FakeContainer:
        if self.gate is not None:
            self.gate.wait(10)
        self.created.append(config)
        container = FakeContainer(f"id{len(self.all)}", config["labels"])
        self.all.append(container)
        return container

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[FakeContainer]:
        assert all and filters == {"label": f"{LABEL}=kernel"}
        return [c for c in self.all if not c.removed and c.labels.get(LABEL) == "kernel"]


class FakeClient:
    def __init__(self) -> None:
        self.containers = FakeContainers()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[DockerLauncher, FakeClient]]:
    pytest.importorskip("docker", reason="the docker SDK is not installed (extra [docker])")
    client = FakeClient()
    yield DockerLauncher(small_settings(run_dir=tmp_path), client=cast(Any, client)), client


def new_spec(tmp_path: Path, slot: int = 0) -> KernelSpec:
    conn_dir = tmp_path / f"k{slot}"
    conn_dir.mkdir(mode=0o700)
    return make_spec(slot, conn_dir, output_limit=1 << 16)


async def test_launch_creates_and_starts_the_configured_container(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path
) -> None:
    launcher, client = fake
    spec = new_spec(tmp_path, slot=2)
    process = await launcher.launch(spec)
    expected = container_config(
        launcher.settings, spec, uid=launcher.uid(2), shared_uid=not launcher.privileged
    )
    assert client.containers.created == [expected]
    assert client.containers.all[0].calls == ["start"]
    uid = launcher.uid(2)
    assert (spec.conn_dir.stat().st_uid, spec.conn_file.stat().st_uid) == (uid, uid)
    await process.close()


async def test_wait_does_not_block_the_loop_and_close_is_idempotent(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path
) -> None:
    launcher, client = fake
    spec = new_spec(tmp_path)
    process = await launcher.launch(spec)
    waiting = asyncio.ensure_future(process.wait())
    await asyncio.sleep(0.05)  # the loop runs while the container is alive
    assert not waiting.done()
    await process.close()
    assert await asyncio.wait_for(waiting, 2) == 137
    await process.close()
    container = client.containers.all[0]
    assert container.calls == ["start", "remove(force=True)"]
    assert not spec.conn_dir.exists()


async def test_kill_returns_at_once_and_the_death_is_explained(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path
) -> None:
    launcher, _ = fake
    process = await launcher.launch(new_spec(tmp_path))
    waiting = asyncio.ensure_future(process.wait())
    process.kill()
    assert await asyncio.wait_for(waiting, 2) == 137
    assert process.death_note() == "the kernel died from signal SIGKILL"
    await process.close()


@pytest.mark.parametrize(
    ("code", "oom", "note"),
    [
        (137, True, "the kernel was killed for exceeding its memory limit"),
        (
            137,
            False,
            "the kernel was killed (SIGKILL, not by the sandbox), most likely for exceeding its memory limit",
        ),
        (128 + 24, False, "the kernel was killed for exceeding its CPU time limit"),
        (
            1,
            False,
            "the kernel exited with status 1: Traceback ...\nModuleNotFoundError: No module named 'ipykernel'",
        ),
    ],
)
async def test_death_note_reads_the_container_state(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path, code: int, oom: bool, note: str
) -> None:
    launcher, client = fake
    process = await launcher.launch(new_spec(tmp_path))
    client.containers.all[0].exit(code, oom=oom)
    assert await asyncio.wait_for(process.wait(), 2) == code
    assert process.death_note() == note
    await process.close()


async def test_a_cancelled_launch_removes_its_container_once_it_exists(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path
) -> None:
    launcher, client = fake
    client.containers.gate = threading.Event()
    launching = asyncio.ensure_future(launcher.launch(new_spec(tmp_path)))
    await asyncio.sleep(0.05)  # the engine is still creating the container
    launching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await launching
    client.containers.gate.set()
    for _ in range(200):
        if client.containers.all and client.containers.all[0].removed:
            break
        await asyncio.sleep(0.01)
    assert client.containers.all[0].calls == ["start", "remove(force=True)"]


async def test_remove_orphans_spares_this_launchers_own_kernels(
    fake: tuple[DockerLauncher, FakeClient], tmp_path: Path
) -> None:
    launcher, client = fake
    orphan = FakeContainer("orphan", {LABEL: "kernel"})
    stranger = FakeContainer("stranger", {"other": "x"})
    client.containers.all += [orphan, stranger]
    process = await launcher.launch(new_spec(tmp_path))
    assert await launcher.remove_orphans() == 1
    assert (orphan.removed, stranger.removed, client.containers.all[-1].removed) == (True, False, False)
    await process.close()


# --- a real engine ------------------------------------------------------------------------------


def engine_settings(tmp_path: Path, **overrides: Any) -> SandboxSettings:
    values: dict[str, Any] = {
        "memory_mb": 256,
        "cell_timeout_s": 3.0,
        "interrupt_grace_s": 1.0,
        "start_timeout_s": 60.0,
        "uid_base": 63000,
        "run_dir": tmp_path,
    }
    return SandboxSettings(**{**values, **overrides})


PODMAN_SOCKET = Path("/run/podman/podman.sock")
"""Where ``deploy/podman-ci.sh`` serves podman's Docker API; used when DOCKER_HOST is unset and
docker's own socket is absent."""


def engine_or_skip(settings: SandboxSettings, monkeypatch: pytest.MonkeyPatch) -> DockerLauncher:
    """A launcher on a real engine; skipped, saying why, without one or without the image, unless
    ``MATHCODER_TEST_DOCKER=require`` (CI, after ``deploy/podman-ci.sh``), which makes that a failure."""
    give_up = pytest.fail if os.environ.get("MATHCODER_TEST_DOCKER") == "require" else pytest.skip
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed (extra [docker])")
    if (
        not os.environ.get("DOCKER_HOST")
        and not Path("/var/run/docker.sock").exists()
        and PODMAN_SOCKET.exists()
    ):
        monkeypatch.setenv("DOCKER_HOST", f"unix://{PODMAN_SOCKET}")
    try:
        launcher = DockerLauncher(settings)
        client = launcher.connect()
    except SandboxUnavailable as e:
        give_up(f"no docker engine: {e}; `deploy/podman-ci.sh` (root, apt) starts podman's")
    try:
        client.images.get(settings.docker_image)
    except docker.errors.ImageNotFound:
        give_up(
            f"docker image {settings.docker_image!r} is not built: `docker build --target sandbox -t "
            f"{settings.docker_image} .` or `deploy/podman-ci.sh images`, or set "
            "MATHCODER_SANDBOX_DOCKER_IMAGE to an image with python and ipykernel"
        )
    return launcher


@pytest_asyncio.fixture
async def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kernel]:
    settings = engine_settings(tmp_path)
    launcher = engine_or_skip(settings, monkeypatch)
    kernel = await Kernel.start(launcher, settings, slot=0)
    try:
        yield kernel
    finally:
        await kernel.close()


@pytest.mark.docker
async def test_engine_kernel_runs_a_cell(kernel: Kernel) -> None:
    r = await kernel.execute("print(1+1)")
    assert (r.status, r.stdout) == (ExecutionStatus.OK, "2\n")


@pytest.mark.docker
async def test_engine_kernel_has_no_network(kernel: Kernel) -> None:
    r = await kernel.execute(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__)\n"
    )
    assert r.status == ExecutionStatus.OK
    assert r.stdout.startswith("blocked"), r.stdout


@pytest.mark.docker
async def test_engine_kernel_is_unprivileged_and_its_root_read_only(kernel: Kernel) -> None:
    r = await kernel.execute(
        "import os\n"
        "print(os.getuid(), os.getcwd(), sorted(k for k in os.environ if k.startswith('MATHCODER')))\n"
        "try:\n"
        "    open('/etc/owned', 'w')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    assert r.status == ExecutionStatus.OK, r
    first, second = r.stdout.splitlines()
    assert first.split()[0] != "0" and first.endswith("/tmp []")
    assert second in ("PermissionError", "OSError")


@pytest.mark.docker
async def test_engine_kernel_sees_its_cgroup_limits(kernel: Kernel) -> None:
    # cgroup v2 (memory.max, pids.max) or v1 (memory/memory.limit_in_bytes, pids/pids.max).
    r = await kernel.execute(
        "from pathlib import Path\n"
        "def first(*names):\n"
        "    return next(Path('/sys/fs/cgroup', n).read_text().strip() for n in names "
        "if Path('/sys/fs/cgroup', n).exists())\n"
        "print(first('memory.max', 'memory/memory.limit_in_bytes'), first('pids.max', 'pids/pids.max'))\n"
    )
    assert r.status == ExecutionStatus.OK, r
    settings = engine_settings(Path("/unused"))
    assert r.stdout.split() == [str(settings.memory_mb << 20), str(settings.max_processes)]


@pytest.mark.docker
async def test_engine_memory_bomb_ends_the_cell_not_the_host(kernel: Kernel) -> None:
    # RLIMIT_AS (address_space_mb, 4 GB) is far above memory_mb (256 MB): the cgroup must stop it.
    r = await kernel.execute(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))\n", timeout_s=60
    )
    assert r.status in (ExecutionStatus.CRASHED, ExecutionStatus.ERROR), r
    if r.status == ExecutionStatus.CRASHED:
        assert r.message is not None and "memory limit" in r.message, r.message
    else:
        assert r.error is not None and r.error.ename == "MemoryError", r


@pytest.mark.docker
async def test_engine_fork_bomb_hits_the_process_limit(kernel: Kernel) -> None:
    r = await kernel.execute(
        "import os, time\n"
        "children = []\n"
        "try:\n"
        "    for _ in range(1000):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children.append(pid)\n"
        "    print('unbounded', len(children))\n"
        "except OSError as e:\n"
        "    print('blocked', len(children), e.errno)\n"
        "finally:\n"
        "    for pid in children:\n"
        "        os.kill(pid, 9)\n"
        "        os.waitpid(pid, 0)\n",
        timeout_s=60,
    )
    assert r.status == ExecutionStatus.OK, r
    verdict, forked, errno = r.stdout.split()
    assert verdict == "blocked" and errno == "11", r.stdout  # EAGAIN
    assert int(forked) < engine_settings(Path("/unused")).max_processes
    after = await kernel.execute("print('alive')")
    assert after.stdout == "alive\n"


@pytest.mark.docker
async def test_engine_kernel_deaf_to_the_interrupt_is_killed_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = engine_settings(tmp_path)
    launcher = engine_or_skip(settings, monkeypatch)
    kernel = await Kernel.start(launcher, settings, slot=1)
    try:
        started = time.perf_counter()
        r = await kernel.execute("sum(range(10**13))")
        assert r.status == ExecutionStatus.KILLED, r
        assert time.perf_counter() - started < settings.cell_timeout_s + settings.interrupt_grace_s + 5
        await asyncio.wait_for(kernel.process.wait(), 10)
    finally:
        await kernel.close()
    assert isinstance(kernel.process, DockerKernelProcess)
    labels: dict[str, Any] = {"label": f"{LABEL}=kernel"}
    ids = [c.id for c in launcher.connect().containers.list(all=True, filters=labels)]
    assert kernel.process.id not in ids
