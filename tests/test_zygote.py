"""Forked kernels (sandbox.zygote): what two forks of one template must not share, and their lifecycle.

The hostile-code battery (tests/test_sandbox.py) runs on forked kernels, the pool's default; these
tests cover what forking adds: no shared state, random sequence, file description or key between
two kernels or with the zygote; no key ever in the zygote's memory; the inherited hash secret and
address-space layout unrelated to the host's; no kernel outliving a SIGKILLed host; a dead zygote
replaced; a zygote that cannot start falling back to cold starts with a logged reason.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from benchmarks.procs import kernel_pid, pids_of_uids
from sandbox import zygote
from sandbox.local import kernel_env
from sandbox.pool import KernelPool, Session
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings
from sandbox.zygote import ZygoteLauncher

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=4, uid_base=64500, run_dir=SandboxSettings().run_dir / "test-zygote"
)
UIDS = range(SETTINGS.uid_base, SETTINGS.uid_base + SETTINGS.max_kernels)
REPO_ROOT = Path(__file__).resolve().parents[1]

_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine(), -1)
_KCMP_FILE = 0
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def same_file_description(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """kcmp(2): whether two descriptors of two processes are one open file description."""
    return int(_libc.syscall(_SYS_KCMP, pid1, pid2, _KCMP_FILE, fd1, fd2)) == 0


def fds_of(pid: int) -> list[int]:
    return [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")]


def zygote_of(pool: KernelPool) -> int:
    launcher = pool.launcher
    assert isinstance(launcher, ZygoteLauncher)
    pid = launcher.zygote_pid
    assert pid is not None
    return pid


async def uid_of(s: Session) -> int:
    r = await s.execute("import os\nos.getuid()")
    return int(r.outputs[0].text or "-1")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        assert isinstance(pool.launcher, ZygoteLauncher) and pool.launcher.describe()["start"] == "fork"
        yield pool
    assert pids_of_uids(UIDS) == []


async def test_two_forked_kernels_share_no_state_random_sequence_or_key(pool: KernelPool) -> None:
    probe = (
        "import random, numpy, sympy.core.random as sr, json, os\n"
        "print(json.dumps([random.random(), float(numpy.random.random()), sr.rng.random(),"
        " hash('abc'), os.getpid()]))"
    )
    async with pool.session() as a, pool.session() as b:
        await a.execute("secret = 42\nimport math\nmath.pi = 3")
        ra, rb = await a.execute(probe), await b.execute(probe)
        assert ra.status == rb.status == ExecutionStatus.OK, (ra, rb)
        va, vb = json.loads(ra.stdout), json.loads(rb.stdout)
        assert va[:3] != vb[:3] and all(
            x != y for x, y in zip(va[:3], vb[:3], strict=True)
        )  # every generator
        seen = await b.execute("import math\n(math.pi, 'secret' in globals())")
        assert seen.outputs[0].text == "(3.141592653589793, False)"
        # Keys: each kernel has its own; neither can see the other's connection file.
        key_a, key_b = a.kernel.client.session.key, b.kernel.client.session.key
        assert key_a != key_b and len(key_a) == len(key_b) == 64
        other = str(b.kernel.process.spec.conn_file)  # type: ignore[attr-defined]
        peek = await a.execute(f"import os\nos.path.exists({other!r})")
        assert peek.outputs[0].text == "False"


async def test_no_open_file_description_is_shared_with_a_sibling_the_zygote_or_the_host(
    pool: KernelPool,
) -> None:
    async with pool.session() as a, pool.session() as b:
        pa, pb = kernel_pid(await uid_of(a)), kernel_pid(await uid_of(b))
        z = zygote_of(pool)
        assert z not in (pa, pb)
        others = {pb: fds_of(pb), z: fds_of(z), os.getpid(): fds_of(os.getpid())}
        checked = 0
        for fd in fds_of(pa):
            for pid, their in others.items():
                for other in their:
                    checked += 1
                    assert not same_file_description(pa, fd, pid, other), (
                        fd,
                        pid,
                        other,
                        os.readlink(f"/proc/{pa}/fd/{fd}"),
                    )
        assert checked > 100


async def test_the_zygote_never_holds_a_key(pool: KernelPool) -> None:
    async with pool.session() as a, pool.session() as b:
        keys = [a.kernel.client.session.key, b.kernel.client.session.key]
        memory = read_writable_memory(zygote_of(pool))
    assert len(memory) > 1 << 20
    for key in keys:
        assert key not in memory


def read_writable_memory(pid: int) -> bytes:
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


async def test_environment_is_the_kernels_own(pool: KernelPool) -> None:
    async with pool.session() as s:
        r = await s.execute(
            "import os, sys, json\nprint(json.dumps([dict(os.environ), os.getcwd(), sys.path]))"
        )
    env, cwd, path = json.loads(r.stdout)
    assert env == kernel_env("/tmp") and cwd == "/tmp"
    assert zygote._PACKAGE_ROOT not in path  # the zygote's PYTHONPATH entry is gone


async def test_inherited_hash_secret_and_layout_are_unrelated_to_the_hosts(pool: KernelPool) -> None:
    """What forking shares (sandbox/README.md, "Forked kernels"): the zygote's hash secret and
    address-space layout, identical in sibling kernels, independent of the host's."""
    probe = (
        "import ctypes, json\n"
        "print(json.dumps([hash('mathcoder'), ctypes.cast(ctypes.CDLL(None).printf, ctypes.c_void_p).value]))"
    )
    async with pool.session() as a, pool.session() as b:
        va, vb = json.loads((await a.execute(probe)).stdout), json.loads((await b.execute(probe)).stdout)
    host = [hash("mathcoder"), ctypes.cast(ctypes.CDLL(None).printf, ctypes.c_void_p).value]
    assert va == vb  # inherited from the one zygote: the accepted, documented sharing
    assert va[0] != host[0] and va[1] != host[1]  # the host's own secret and layout stay unknown


async def test_a_dead_zygote_is_restarted_and_its_kernels_are_seen_dead(pool: KernelPool) -> None:
    launcher = pool.launcher
    assert isinstance(launcher, ZygoteLauncher)
    starts = launcher.zygote_starts
    async with pool.session() as s:
        await s.execute("x = 1")
        os.kill(zygote_of(pool), signal.SIGKILL)
        r = await s.execute("import time\ntime.sleep(5)", timeout_s=10)
        assert r.status == ExecutionStatus.CRASHED and "zygote" in (r.message or "")
        assert r.wall_time_s < 2
        after = await s.execute("x")  # a fresh kernel from a fresh zygote
        assert after.error is not None and after.error.ename == "NameError"
    assert launcher.zygote_starts == starts + 1 and launcher.cold_starts == 0
    async with pool.session() as s:
        assert (await s.execute("print(sum(range(10)))")).stdout == "45\n"


async def test_a_zygote_that_cannot_start_falls_back_to_cold_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(zygote, "PRELOAD", ("no_such_module_for_the_zygote",))
    cfg = SETTINGS.model_copy(update={"pool_size": 0, "uid_base": 64520, "start_timeout_s": 20})
    with caplog.at_level(logging.WARNING, logger="sandbox.zygote"):
        async with KernelPool(cfg) as pool:
            for _ in range(3):
                async with pool.session() as s:
                    assert (await s.execute("print(1)")).stdout == "1\n"
            launcher = pool.launcher
            assert isinstance(launcher, ZygoteLauncher)
            assert launcher.cold_starts == 3 and launcher.describe()["start"] == "cold"
            assert "no_such_module_for_the_zygote" in (launcher.fallback_reason or "")
    assert "this kernel starts cold" in caplog.text and "forked kernel start disabled" in caplog.text


HOST = """
import asyncio, json, sys
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

async def main():
    cfg = SandboxSettings.model_validate_json(sys.argv[1])
    pool = KernelPool(cfg)
    await pool.start()
    a = await pool._lease()
    b = await pool._lease()
    await a.execute("import subprocess\\nsubprocess.Popen(['sleep', '600'], start_new_session=True)")
    print(json.dumps({"zygote": pool.launcher.zygote_pid}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_no_kernel_outlives_a_sigkilled_host() -> None:
    cfg = SETTINGS.model_copy(update={"uid_base": 64540, "run_dir": SETTINGS.run_dir / "host"})
    uids = range(cfg.uid_base, cfg.uid_base + cfg.max_kernels)
    host = await asyncio.to_thread(start_host, cfg)
    try:
        assert host.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(host.stdout.readline), 60)
        zygote_pid = json.loads(line)["zygote"]
        kernels = pids_of_uids(uids)
        assert len(kernels) >= 3  # two kernels and a detached sleep (plus the idle pool's)
    finally:
        host.kill()
        host.wait()
        if host.stdout is not None:
            host.stdout.close()
    left = await asyncio.to_thread(survivors, uids, zygote_pid, 5.0)
    assert left == [], f"outlived the host: {left}"
    # A killed host cannot remove its kernels' cgroups and directories; the next pool does.
    assert cgroups_of(host.pid) and any(cfg.run_dir.glob(f"k*-{host.pid}-*"))
    async with KernelPool(cfg):  # its zygote removes the dead one's folder as it starts
        assert cgroups_of(host.pid) == [] and list(cfg.run_dir.glob(f"k*-{host.pid}-*")) == []
        assert list(cfg.run_dir.glob(f"zygote-{host.pid}")) == []


def start_host(cfg: SandboxSettings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST, cfg.model_dump_json()],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def survivors(uids: range, zygote_pid: int, timeout_s: float) -> list[int]:
    """Processes of the kernels' uids, and the zygote, still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = pids_of_uids(uids) + ([zygote_pid] if Path(f"/proc/{zygote_pid}").exists() else [])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def cgroups_of(host_pid: int) -> list[Path]:
    """The kernel cgroups a host made (``sandbox.cgroup``: named after the host's pid)."""
    return list(Path("/sys/fs/cgroup").glob(f"*/**/mathcoder-{host_pid}-*")) + list(
        Path("/sys/fs/cgroup").glob(f"mathcoder-{host_pid}-*")
    )
