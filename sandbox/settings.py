"""Settings of the sandbox subsystem (environment variables prefixed ``MATHCODER_SANDBOX_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    """Every limit of the sandbox, with its unit in its name."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_SANDBOX_", extra="forbid")

    backend: Literal["local", "docker"] = Field(
        default="local", description="local: bubblewrap on this host; docker: one container per kernel."
    )
    isolation: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description=(
            "bwrap: own network/pid/mount namespaces, unprivileged uid, scrubbed environment. "
            "none: a plain kernel with rlimits only — for development on machines without bubblewrap; "
            "never for untrusted code."
        ),
    )
    kernel_start: Literal["fork", "cold"] = Field(
        default="fork",
        description=(
            "fork: each kernel is a fork of a warm, pre-imported zygote (local backend; falls back to cold "
            "with a logged reason where it cannot). cold: a new Python process per kernel."
        ),
    )
    pool_size: int = Field(default=2, ge=0, le=256, description="Kernels kept started and idle.")
    max_kernels: int = Field(
        default=16, ge=1, le=1024, description="Most kernels alive at once (leased + idle + starting)."
    )
    max_waiting: int = Field(
        default=1024, ge=0, description="Most sessions waiting for a kernel; one more raises PoolFull."
    )
    cell_timeout_s: float = Field(default=10.0, gt=0, description="Wall-clock limit of one cell.")
    interrupt_grace_s: float = Field(
        default=2.0,
        gt=0,
        description="After a timeout, how long an interrupted cell may take to stop before the kernel is killed.",
    )
    start_timeout_s: float = Field(default=30.0, gt=0, description="Limit for a kernel to start and answer.")
    memory_mb: int = Field(
        default=1024,
        ge=128,
        description="Memory a kernel and all it starts may use (cgroup limit); past it, an OOM kill.",
    )
    address_space_mb: int = Field(
        default=4096,
        ge=1024,
        description=(
            "Virtual address space of a kernel (RLIMIT_AS): a single allocation past it fails with MemoryError "
            "inside the kernel. An idle kernel with numpy and sympy maps about 900 MB."
        ),
    )
    cpu_time_s: int = Field(
        default=600,
        ge=1,
        description="CPU seconds a kernel may use over its life (RLIMIT_CPU); then it is killed.",
    )
    max_processes: int = Field(
        default=64,
        ge=8,
        description="Processes and threads of one kernel (RLIMIT_NPROC per uid, cgroup pids.max).",
    )
    max_open_files: int = Field(
        default=256, ge=32, description="Open file descriptors of a kernel (RLIMIT_NOFILE)."
    )
    max_file_mb: int = Field(default=64, ge=1, description="Largest file a cell may write (RLIMIT_FSIZE).")
    workdir_mb: int = Field(
        default=256, ge=8, description="Size of the kernel's private working directory (tmpfs)."
    )
    max_capture_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Output kept per stream per cell on the host; the rest is dropped and flagged as truncated.",
    )
    prompt_output_chars: int = Field(
        default=1000, ge=80, description="Output shown to a model: longer output keeps its head and tail."
    )
    uid_base: int = Field(
        default=61000,
        ge=1000,
        description="Kernels run as uid_base + slot (one uid each, so NPROC is per kernel).",
    )
    run_dir: Path = Field(
        default=Path("/tmp/mathcoder-sandbox"), description="Host folder for the kernels' socket directories."
    )
    cgroups: bool = Field(
        default=True,
        description="Put each kernel in its own memory and pids cgroup where the host allows it.",
    )
    docker_image: str = Field(default="mathcoder-sandbox:latest", description="Image of the docker backend.")
    docker_cpus: float = Field(
        default=1.0, gt=0, description="CPUs one kernel container may use (docker backend)."
    )
