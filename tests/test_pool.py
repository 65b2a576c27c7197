"""The warm pool: leasing, fairness, bounds, cancellation, failures and a clean shutdown."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.procs import pids_of_uids
from sandbox import cgroup
from sandbox.errors import KernelStartError, PoolClosed, PoolFull
from sandbox.launcher import KernelSpec
from sandbox.local import LocalKernelProcess, LocalLauncher
from sandbox.pool import START_TRIES, KernelPool
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings

BASE = SandboxSettings()


def settings(uid_base: int, **overrides: Any) -> SandboxSettings:
    return BASE.model_copy(
        update={"uid_base": uid_base, "run_dir": BASE.run_dir / f"test-pool-{uid_base}", **overrides}
    )


async def test_a_lease_from_a_warm_pool_takes_a_started_kernel() -> None:
    async with KernelPool(settings(63000, pool_size=2, max_kernels=4)) as pool:
        assert (pool.stats().idle, pool.stats().started) == (2, 2)
        t0 = time.perf_counter()
        async with pool.session() as s:
            lease_s = time.perf_counter() - t0
            assert pool.stats().started == 2  # no kernel was started for this lease
            assert (await s.execute("1 + 1")).outputs[0].text == "2"
        assert lease_s < 0.05


async def test_waiters_are_served_in_order_and_the_bound_holds() -> None:
    cfg = settings(63010, pool_size=1, max_kernels=2)
    order: list[int] = []
    async with KernelPool(cfg) as pool:
        release = asyncio.Event()

        async def hold(i: int) -> None:
            async with pool.session() as s:
                order.append(i)
                assert len(pool._leased) <= cfg.max_kernels
                await s.execute("pass")
                await release.wait()

        holders = [asyncio.create_task(hold(i)) for i in range(2)]
        await pool.wait_until(lambda st: st.leased == 2)
        waiters = []
        for i in range(2, 5):
            waiters.append(asyncio.create_task(hold(i)))
            await pool.wait_until(lambda st, n=i - 1: st.waiting == n)  # queued in this order
        assert pool.stats().leased == 2
        release.set()
        await asyncio.gather(*holders, *waiters)
    assert order == [0, 1, 2, 3, 4]


async def test_a_full_queue_is_refused_at_once() -> None:
    cfg = settings(63020, pool_size=1, max_kernels=1, max_waiting=1)
    async with KernelPool(cfg) as pool, pool.session():
        queued = asyncio.create_task(pool.session().__aenter__())
        await pool.wait_until(lambda st: st.waiting == 1)
        with pytest.raises(PoolFull, match="MATHCODER_SANDBOX_MAX_WAITING"):
            async with pool.session():
                pass
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.stats().waiting == 0  # the cancelled waiter left the queue


async def test_a_cancelled_session_returns_its_kernel_safely() -> None:
    cfg = settings(63030, pool_size=1, max_kernels=2)
    async with KernelPool(cfg) as pool:

        async def long_cell(running: asyncio.Event) -> None:
            async with pool.session() as s:
                code = "import time\nprint('running', flush=True)\ntime.sleep(60)"
                await s.execute(code, timeout_s=60, on_stream=lambda _name, _text: running.set())

        running = asyncio.Event()
        task = asyncio.create_task(long_cell(running))
        await running.wait()  # the cell is running inside the kernel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pool.drain()
        assert pool.stats().leased == 0
        async with pool.session() as s:
            assert (await s.execute("print('ok')")).stdout == "ok\n"
        events = [asyncio.Event(), asyncio.Event()]
        others = [asyncio.create_task(long_cell(e)) for e in events]
        await asyncio.gather(*(e.wait() for e in events))
        others[0].cancel()  # one of two concurrent sessions: the other goes on
        async with asyncio.timeout(30):
            with pytest.raises(asyncio.CancelledError):
                await others[0]
        assert not others[1].done()
        others[1].cancel()
        await asyncio.gather(others[1], return_exceptions=True)


async def test_shutdown_leaves_no_kernel_process_or_file() -> None:
    cfg = settings(63040, pool_size=2, max_kernels=4)
    pool = KernelPool(cfg)
    await pool.start()
    uids = range(cfg.uid_base, cfg.uid_base + cfg.max_kernels)
    async with pool.session() as s:
        await s.execute("import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)")
        assert len(pids_of_uids(uids)) >= 3
        await pool.shutdown()  # with a session still open
    assert pids_of_uids(uids) == []
    assert list(cfg.run_dir.iterdir()) == []
    with pytest.raises(PoolClosed):
        async with pool.session():
            pass


class DiesOnStart(LocalLauncher):
    """A real process that exits at once instead of serving the kernel protocol."""

    async def launch(self, spec: KernelSpec) -> LocalKernelProcess:
        with (spec.conn_dir / "kernel.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; sys.stderr.write('no kernel today'); sys.exit(3)",
                stderr=log,
            )
        return LocalKernelProcess(process=process, spec=spec, group=None)


async def test_a_kernel_that_dies_on_start_fails_the_waiter_with_the_reason() -> None:
    cfg = settings(63050, pool_size=0, max_kernels=1)
    async with KernelPool(cfg, DiesOnStart(cfg)) as pool:
        with pytest.raises(KernelStartError, match="exited with status 3: no kernel today"):
            async with pool.session():
                pass
        assert pool.stats().start_failures == START_TRIES  # tried again before the waiter is failed
    assert list(cfg.run_dir.iterdir()) == []


class DiesOnFirstStart(DiesOnStart):
    """The first kernel dies as it starts (as one killed from outside would); the next ones start."""

    def __init__(self, settings: SandboxSettings) -> None:
        super().__init__(settings)
        self.launched = 0

    async def launch(self, spec: KernelSpec) -> LocalKernelProcess:
        self.launched += 1
        return await (super().launch(spec) if self.launched == 1 else LocalLauncher.launch(self, spec))


async def test_a_kernel_that_dies_on_start_once_is_started_again_for_its_waiter() -> None:
    cfg = settings(63055, pool_size=0, max_kernels=1)
    async with KernelPool(cfg, DiesOnFirstStart(cfg)) as pool:
        async with pool.session() as s:
            assert (await s.execute("6 * 7")).outputs[0].text == "42"
        assert pool.stats().start_failures == 1


async def test_a_dead_idle_kernel_is_never_leased() -> None:
    cfg = settings(63060, pool_size=1, max_kernels=2)
    async with KernelPool(cfg) as pool:
        idle = pool._idle[0]
        idle.process.kill()  # SIGKILL from outside, to the kernel and all it started
        await idle.process.wait()
        async with pool.session() as s:
            assert s.kernel is not idle
            r = await s.execute("6 * 7")
        assert r.status == ExecutionStatus.OK and r.outputs[0].text == "42"


def test_the_launcher_reports_whether_cgroup_joins_are_fast() -> None:
    """favordynmods on any cgroup hierarchy (a host-wide choice) is reported with the launcher's layers."""
    v1 = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    v2_fast = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime,favordynmods 0 0\n"
    other = "tmpfs /favordynmods tmpfs rw,favordynmods 0 0\n"  # not a cgroup mount
    assert not cgroup.dynmods_favoured(v1) and not cgroup.dynmods_favoured(v1 + other)
    assert cgroup.dynmods_favoured(v1 + v2_fast)
    launcher = LocalLauncher(SandboxSettings(isolation="none"))
    expected = launcher.privileged and cgroup.dynmods_favoured(Path("/proc/self/mounts").read_text())
    assert launcher.describe()["cgroup_favordynmods"] is expected
