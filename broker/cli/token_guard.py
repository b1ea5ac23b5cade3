"""Keep the agent's broker token out of reach of the commands the agent-side CLI starts.

``broker exec`` and ``broker mcp`` (``run_with_scope``) run commands with a scope's AWS keys.  Those
commands run as the same user as this process, and a process may read another of its own user's
``/proc/PID/environ`` and ``/proc/PID/mem``, or ptrace it.  So once the token source is read:

1. the ``BROKER_TOKEN*`` variables leave this process's environment: from ``os.environ`` (children do
   not inherit them) and from the block the kernel shows as ``/proc/PID/environ`` (their values are
   overwritten in place: unsetting a variable alone leaves that block as it was at exec);
2. the process is made non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): its ``/proc`` files belong to root
   and ptrace is refused, so a command of the same user can read neither its environment nor its memory
   (where the token still is).  Children are dumpable again after their own exec; this is about the parent.

What this does not cover (README, *Agents and MCP*): a token *file* or token *command* the same user can
read or run itself, and anyone holding CAP_SYS_PTRACE (root).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable

BROKER_TOKEN_VARIABLES = ("BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND")
PR_SET_DUMPABLE = 4  # <linux/prctl.h>


class TokenGuardError(RuntimeError):
    """The process could not be made unreadable to its children: nothing is run."""


def protect_token_from_children(names: Iterable[str] = BROKER_TOKEN_VARIABLES) -> None:
    """Forget ``names`` from this process's environment and make the process non-dumpable (Linux).

    Call it after the token source was read (``BrokerClient`` holds it) and before any child starts.
    Raises :class:`TokenGuardError` on Linux if ``prctl`` fails: fail closed, no command runs.
    """
    names = tuple(names)
    if sys.platform.startswith("linux"):
        _erase_initial_environment(names)
    for name in names:
        os.environ.pop(name, None)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise TokenGuardError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")


def _erase_initial_environment(names: tuple[str, ...]) -> None:
    """Overwrite the values of ``names`` where libc's ``environ`` points (at first, the block that
    ``/proc/PID/environ`` shows), before ``unsetenv`` drops the pointers."""
    prefixes = tuple(name.encode() + b"=" for name in names)
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    index = 0
    while environ[index]:
        address = environ[index]
        entry = ctypes.string_at(address)
        for prefix in prefixes:
            if entry.startswith(prefix):
                # NOTE: zeros over the whole entry, same length: the block keeps its layout; name and value go.
                ctypes.memset(address, 0, len(entry))
                break
        index += 1


__all__ = ["BROKER_TOKEN_VARIABLES", "TokenGuardError", "protect_token_from_children"]
