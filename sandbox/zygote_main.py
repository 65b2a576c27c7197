"""The zygote process: a warm, pre-imported kernel template that forks sandboxed kernels.

Started by ``sandbox.zygote`` as ``python -m sandbox.zygote_main HOST_PID`` with the kernel's
environment (nothing of the host's).  It reads one JSON profile line on stdin, imports ipykernel and
the configured modules, builds the IPython shell and the kernel application's configuration, freezes
the heap for the garbage collector, and then serves JSON-line requests on stdin, answering on stdout:

    {"op": "fork", "id": 7, "conn_dir": ..., "uid": 61003, ...}
    -> {"ev": "forked", "id": 7, "pid": 1234}      (host pid of the kernel's outermost process)
    -> {"ev": "ready", "id": 7, "timings": {...}}  (sockets bound, kernel about to serve)
    -> {"ev": "exit", "id": 7, "status": 0}        (a wait status, as os.waitpid gives)

It never runs a cell and never binds a kernel socket: only its children do, so it cannot be handed
out as a kernel.  It stays single-threaded (``fork`` of a threaded process keeps only one thread),
never reads a connection file (keys exist only in the child that reads its own), and dies with its
host (``PR_SET_PDEATHSIG``); every process it forks dies with it.

A fork under ``isolation="bwrap"`` (as root) makes two processes, as bubblewrap does:

- **init** (pid 1 of a new pid namespace, root): joins the kernel's cgroup, enters new mount, ipc,
  uts and network namespaces (the network one made ahead of time, loopback up, as bringing ``lo``
  up takes milliseconds), builds a root of read-only binds (``/usr``, the Python installation, a
  few files of ``/etc``), a private tmpfs ``/tmp``, ``/dev``, ``/proc`` and the kernel's socket
  directory, pivots into it, forks the kernel and then only reaps; it exits with the kernel's
  status, which tears the namespace down;
- **kernel** (pid 2): a new session, the rlimits, the kernel's uid with no capabilities (bounding
  set dropped) and no_new_privs, the fixed environment, stdio to its log, every inherited file
  descriptor closed, the random generators reseeded; it then reads its connection file, binds its
  sockets, starts ipykernel's threads on the pre-built shell, tells the zygote it is ready and
  serves.

Under ``isolation="none"`` the fork is the kernel itself (rlimits, cgroup, working directory).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import sys
import time
import traceback
import types
from typing import Any

from sandbox import nsutil

NS_FLAGS = nsutil.CLONE_NEWNS | nsutil.CLONE_NEWIPC | nsutil.CLONE_NEWUTS | nsutil.CLONE_NEWCGROUP

_T0 = time.perf_counter()
_KERNEL_MODULES = (
    "ipykernel.debugger", "ipykernel.comm", "ipykernel.control", "ipykernel.shellchannel",
    "ipykernel.heartbeat", "ipykernel.iostream", "ipykernel.displayhook", "ipykernel.eventloops",
    "ipykernel.jsonutil", "jupyter_client.connect", "zmq.eventloop.zmqstream", "tornado.ioloop",
    "IPython.core.completer", "IPython.extensions.storemagic", "faulthandler", "tornado.platform.asyncio",
    "resource",
)  # fmt: skip


def _now_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class Steps:
    """Wall and CPU milliseconds of each start-up step of a kernel (sent with its ready message)."""

    def __init__(self, since: float) -> None:
        self.out: dict[str, float] = {}
        self.wall, self.cpu = since, time.process_time()

    def mark(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.out[f"{name}_ms"] = round((wall - self.wall) * 1000, 3)
        self.out[f"{name}_cpu_ms"] = round((cpu - self.cpu) * 1000, 3)
        self.wall, self.cpu = wall, cpu


class _SysView:
    """``sys`` as ``ipykernel.ipkernel`` sees it while a kernel object is built: ``modules`` is the
    template's list of module files (``Template.module_stand_ins``), the rest the real ``sys``."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


class Template:
    """What every kernel starts from: ipykernel's application, configured, with its shell built."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.timings: dict[str, float] = {}
        t = time.perf_counter()
        for name in profile.get("preload", []):
            __import__(name)
        self.timings["import_preload_ms"] = _now_ms(t)
        t = time.perf_counter()
        from ipykernel.ipkernel import IPythonKernel
        from ipykernel.kernelapp import IPKernelApp
        from ipykernel.zmqshell import ZMQInteractiveShell

        for name in _KERNEL_MODULES:  # what IPKernelApp.initialize would import in each child
            __import__(name)
        self.timings["import_ipykernel_ms"] = _now_ms(t)
        t = time.perf_counter()
        app: Any = IPKernelApp.instance()
        # The configuration part of IPKernelApp.initialize: traitlets, the profile, pdb.
        base: Any = super(IPKernelApp, app)
        base.initialize(list(profile.get("kernel_args", [])))
        app.init_pdb()
        # The shell is a singleton: IPythonKernel.__init__ in the child finds it built.
        shell = ZMQInteractiveShell.instance(
            parent=app,
            profile_dir=app.profile_dir,
            user_module=None,
            user_ns=app.user_ns,
            kernel=None,
            compiler_class=IPythonKernel.compiler_class.default_value,
        )
        self.app = app
        self.timings["build_shell_ms"] = _now_ms(t)
        t = time.perf_counter()
        try:  # the first traceback of a kernel imports and caches its formatting machinery
            raise ZeroDivisionError("warm-up")
        except ZeroDivisionError:
            shell.InteractiveTB.structured_traceback(*sys.exc_info())
        self.timings["warm_traceback_ms"] = _now_ms(t)
        # IPythonKernel.__init__ lists the files of all ~1,200 loaded modules for its debugger; done in
        # each child, that touches every module object: ~2,200 copy-on-write page faults, 8-11 ms of
        # CPU. The list is made here once; the child's scan reads these compact stand-ins instead.
        files = [m.__file__ for m in sys.modules.copy().values() if getattr(m, "__file__", None)]
        self.module_stand_ins = {str(i): types.SimpleNamespace(__file__=f) for i, f in enumerate(files)}

    def boot(self, conn_file: str, startup_file: str, steps: Steps, on_ready: Any) -> None:
        """In the kernel process: sockets, threads and the kernel object; then serve forever."""
        app: Any = self.app
        app.connection_file = conn_file
        app.init_connection_file()  # reads the key: only ever in this process
        app.init_sockets()  # a fresh zmq context, sockets, the iopub thread
        steps.mark("sockets")
        # No heartbeat: the host watches the process instead (sandbox.kernel).
        app.init_io()
        app.init_signal()
        ipkernel_module: Any = sys.modules["ipykernel.ipkernel"]
        ipkernel_module.sys = _SysView(self.module_stand_ins)
        try:
            app.init_kernel()  # the control and shell-channel threads; the kernel on the pre-built shell
        finally:
            ipkernel_module.sys = sys
        steps.mark("kernel_object")
        shell = app.kernel.shell
        shell.kernel = app.kernel
        shell.parent = app.kernel
        app.init_path()
        app.init_shell()
        app.exec_files = [startup_file]
        app.init_extensions()
        app.init_code()
        steps.mark("startup_code")
        on_ready()
        app.start()


class Zygote:
    def __init__(self, profile: dict[str, Any], template: Template) -> None:
        self.profile = profile
        self.template = template
        self.bwrap = profile["isolation"] == "bwrap"
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.buffer = b""
        self.kernels: dict[int, int] = {}  # pid -> request id
        self.ready_pipes: dict[int, int] = {}  # read fd -> request id
        self.death_pipes: dict[int, int] = {}  # request id -> write fd kept open while we live
        self.spare_net: list[int] = []
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.bwrap else -1
        self.own_net_ns = os.open("/proc/self/ns/net", os.O_RDONLY) if self.bwrap else -1

    # -- the serving loop (single-threaded) -----------------------------------------------------
    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(0, selectors.EVENT_READ, "stdin")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        while True:
            if self.bwrap and len(self.spare_net) < 1:
                self.make_spare_net()
            for key, _ in self.selector.select():
                if key.data == "stdin":
                    if not self.read_requests():
                        return
                elif key.data == "wake":
                    while True:
                        try:
                            if not os.read(self.wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                    self.reap()
                else:
                    self.ready(key.fd)

    def emit(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def read_requests(self) -> bool:
        chunk = os.read(0, 65536)
        if not chunk:
            return False  # the host closed our stdin: it is gone or done with us
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            request = json.loads(line)
            try:
                self.fork(request)
            except Exception as exc:
                self.emit({"ev": "failed", "id": request["id"], "error": f"{type(exc).__name__}: {exc}"})
        return True

    def reap(self) -> None:
        while self.kernels:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.kernels.pop(pid, None)
            if rid is not None:
                fd = self.death_pipes.pop(rid, None)
                if fd is not None:
                    os.close(fd)
                self.emit({"ev": "exit", "id": rid, "status": status})

    def ready(self, fd: int) -> None:
        rid = self.ready_pipes.pop(fd)
        self.selector.unregister(fd)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        if data:
            self.emit({"ev": "ready", "id": rid, "timings": json.loads(data)})

    def make_spare_net(self) -> None:
        """A network namespace with its loopback up, made while idle (``lo`` up costs milliseconds)."""
        nsutil.unshare(nsutil.CLONE_NEWNET)
        try:
            nsutil.loopback_up()
            self.spare_net.append(os.open("/proc/self/ns/net", os.O_RDONLY))
        finally:
            nsutil.setns(self.own_net_ns, nsutil.CLONE_NEWNET)

    # -- forking a kernel -----------------------------------------------------------------------
    def fork(self, request: dict[str, Any]) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        ready_r, ready_w = os.pipe()
        death_r, death_w = os.pipe()
        net = self.spare_net.pop() if self.spare_net else -1
        pid = -1
        if self.bwrap:
            nsutil.unshare(nsutil.CLONE_NEWPID)  # our next child is pid 1 of a new pid namespace
        try:
            pid = os.fork()
        finally:
            if self.bwrap and pid != 0:
                nsutil.setns(self.own_pid_ns, nsutil.CLONE_NEWPID)
        if pid == 0:
            code = 70
            try:
                os.close(ready_r)
                os.close(death_w)
                self.child(request, ready_w, death_r, net, t0)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(death_r)
        if net >= 0:
            os.close(net)
        self.kernels[pid] = request["id"]
        self.death_pipes[request["id"]] = death_w
        self.ready_pipes[ready_r] = request["id"]
        self.selector.register(ready_r, selectors.EVENT_READ, "ready")
        cpu = round((time.process_time() - c0) * 1000, 3)
        self.emit(
            {"ev": "forked", "id": request["id"], "pid": pid, "fork_ms": _now_ms(t0), "fork_cpu_ms": cpu}
        )

    def forget(self, keep: set[int]) -> None:
        """In a child: drop the zygote's signal set-up and every descriptor not in ``keep``."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        fds = [self.wake_r, self.wake_w, self.own_pid_ns, self.own_net_ns, *self.spare_net]
        fds += [*self.ready_pipes, *self.death_pipes.values()]
        for fd in fds:
            if fd >= 0 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # Anything else (nothing is expected) goes too; 0-2 are replaced by the caller.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def child(self, request: dict[str, Any], ready_w: int, death_r: int, net: int, t0: float) -> None:
        steps = Steps(t0)
        steps.mark("fork")
        nsutil.prctl(nsutil.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.set_blocking(death_r, False)
        try:
            if os.read(death_r, 1) == b"":
                os._exit(71)  # the zygote died before the death signal was armed
        except BlockingIOError:
            pass
        os.setsid()  # leads its own process group, as bubblewrap does for a cold kernel
        log = os.open(
            os.path.join(request["conn_dir"], "kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        self.forget({ready_w, death_r, net})
        for procs in request.get("cgroup_procs", []):
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        steps.mark("setup")
        if self.bwrap:
            nsutil.unshare(NS_FLAGS)
            if net >= 0:
                nsutil.setns(net, nsutil.CLONE_NEWNET)
                os.close(net)
            else:
                nsutil.unshare(nsutil.CLONE_NEWNET)
                nsutil.loopback_up()
            steps.mark("namespaces")
            build_root(self.profile["root"], request["conn_dir"])
            steps.mark("root")
            kernel = os.fork()
            if kernel != 0:
                os.close(ready_w)
                init_loop(kernel)  # never returns
            steps.cpu = 0.0  # a new process: its CPU clock starts at zero
            steps.mark("fork_kernel")
        os.close(death_r)
        self.become_kernel(request, ready_w, steps)

    def become_kernel(self, request: dict[str, Any], ready_w: int, steps: Steps) -> None:
        if self.bwrap:
            os.setsid()  # under init: a session of its own (isolation=none: the fork already made one)
        for which, value in self.profile["rlimits"]:
            import resource

            resource.setrlimit(which, (value, value))
        uid = request.get("uid")
        if uid is not None:
            for cap in range(nsutil.last_cap() + 1):
                nsutil.prctl(nsutil.PR_CAPBSET_DROP, cap)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            nsutil.clear_capabilities()
        nsutil.prctl(nsutil.PR_SET_NO_NEW_PRIVS, 1)
        steps.mark("privileges")
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        # As a cold kernel's: its working directory first, not the zygote's, nor the zygote's PYTHONPATH.
        sys.path[:] = [request["cwd"], *(p for p in sys.path[1:] if p != self.profile["package_root"])]
        set_cmdline(request["cmdline"])
        steps.mark("environment")
        reseed()
        steps.mark("reseed")
        modules_before = set(sys.modules)

        def on_ready() -> None:
            steps.out["boot_imports"] = len(set(sys.modules) - modules_before)
            steps.out["kernel_cpu_ms"] = round(time.process_time() * 1000, 3)
            with open(
                "/proc/self/stat"
            ) as stat:  # minor faults: mostly copy-on-write of the template's pages
                steps.out["kernel_minor_faults"] = int(stat.read().rsplit(")", 1)[1].split()[7])
            os.write(ready_w, json.dumps(steps.out).encode())
            os.close(ready_w)

        self.template.boot(request["conn_file"], request["startup_file"], steps, on_ready)
        os._exit(0)


def build_root(plan: dict[str, Any], conn_dir: str) -> None:
    """The kernel's filesystem, as bubblewrap builds it (sandbox.local._bwrap_argv), then pivot into it."""
    m = nsutil
    m.mount(None, "/", None, m.MS_REC | m.MS_PRIVATE)
    root: str = plan["dir"]
    m.mount("tmpfs", root, "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=0755")

    def at(path: str) -> str:
        return root + path

    def parents(path: str) -> None:
        os.makedirs(os.path.dirname(at(path)), mode=0o755, exist_ok=True)

    def bind(src: str, *, ro: bool = True, dst: str | None = None) -> None:
        target = at(dst or src)
        parents(dst or src)
        if os.path.isdir(src):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
        m.mount(src, target, None, m.MS_BIND | m.MS_REC)
        if ro:
            m.mount(None, target, None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | m.MS_NOSUID)

    bind("/usr")
    for target, link in plan["symlinks"]:
        os.symlink(target, at(link))
    for path in plan["etc_files"]:
        bind(path)
    os.mkdir(at("/tmp"))
    m.mount("tmpfs", at("/tmp"), "tmpfs", m.MS_NOSUID | m.MS_NODEV, f"mode=1777,size={plan['tmp_bytes']}")
    os.mkdir(at("/dev"), 0o755)
    m.mount("tmpfs", at("/dev"), "tmpfs", m.MS_NOSUID, "mode=0755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        bind(f"/dev/{node}", ro=False)
    for target, link in (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
                         ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx")):  # fmt: skip
        os.symlink(target, at(f"/dev/{link}"))
    os.mkdir(at("/dev/pts"), 0o755)
    m.mount(
        "devpts", at("/dev/pts"), "devpts", m.MS_NOSUID | m.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"
    )
    os.mkdir(at("/dev/shm"))
    m.mount("tmpfs", at("/dev/shm"), "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=1777")
    os.mkdir(at("/proc"), 0o555)
    m.mount("proc", at("/proc"), "proc", m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC)
    for path in plan["python_dirs"]:
        if not path.startswith("/usr/"):
            bind(path)
    bind(conn_dir, ro=False)
    os.chdir(root)
    m.pivot_root(".", ".")
    m.umount2(".", m.MNT_DETACH)
    os.chdir("/")
    m.mount(None, "/", None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV)


def init_loop(kernel: int) -> None:
    """pid 1 of the kernel's namespace: reap everything; leave with the kernel's status."""
    os.closerange(3, 1 << 16)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == kernel:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def set_cmdline(text: str) -> None:
    """Show ``text`` as this process's command line (``ps``, /proc/PID/cmdline), as cold kernels read.

    The zygote was started with a padded argument, so the kernel's line fits in place.
    """
    import ctypes

    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
    data = text.encode()[: end - start - 1]
    ctypes.memmove(start, data + bytes(end - start - len(data)), end - start)


def reseed() -> None:
    """New seeds for the generators every fork would otherwise share with its siblings."""
    import random

    random.seed()  # also done by CPython's own at-fork hook; kept explicit
    np = sys.modules.get("numpy")
    if np is not None:  # 256 bits from the OS (a bare seed() costs 7 ms of CPU)
        np.random.seed(np.frombuffer(os.urandom(32), dtype=np.uint32))
    sympy_random = sys.modules.get("sympy.core.random")
    if sympy_random is not None and hasattr(sympy_random, "rng"):
        sympy_random.rng.seed()


def main() -> None:
    host = int(sys.argv[1])
    nsutil.prctl(nsutil.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host:
        sys.exit(0)  # the host died before the death signal was armed
    profile = json.loads(sys.stdin.buffer.readline())
    template = Template(profile)
    gc.collect()
    gc.freeze()  # the template's objects are never collected: fewer pages copied in each child
    import threading

    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise SystemExit("the zygote must be single-threaded before it forks")
    zygote = Zygote(profile, template)
    zygote.emit(
        {"ev": "hello", "pid": os.getpid(), "timings": {**template.timings, "total_ms": _now_ms(_T0)}}
    )
    zygote.serve()


if __name__ == "__main__":
    main()
