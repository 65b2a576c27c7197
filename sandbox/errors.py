"""Failures of the sandbox itself.

A cell that raises, times out or kills its kernel is not an error here: that is an
``ExecutionResult`` with a status.  These exceptions mean the sandbox could not do its job, and
each message names the setting or the host facility to change.
"""

from __future__ import annotations


class SandboxError(RuntimeError):
    """Base class: the sandbox failed, not the code it ran."""


class SandboxUnavailable(SandboxError):
    """The host lacks what the configured isolation needs (bubblewrap, root, a docker engine)."""


class KernelStartError(SandboxError):
    """A kernel did not start or did not answer within ``start_timeout_s``."""


class KernelDied(SandboxError):
    """A kernel process exited while it was not running a cell."""


class PoolClosed(SandboxError):
    """The pool was shut down; no more sessions."""


class PoolFull(SandboxError):
    """``max_waiting`` sessions are already queued for a kernel."""


class KernelLost(SandboxError):
    """A kernel was lost for a reason outside its code while a trajectory used it (killed from outside
    the sandbox, died while idle, shut down): its state is gone, and the trajectory must start over."""
