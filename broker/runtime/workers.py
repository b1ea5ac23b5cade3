"""``broker serve --workers N``: N broker processes behind one listening socket.

The supervisor binds the socket, then forks N workers before it has started a thread or opened a
database connection.  Each worker builds its own container (engine, catalog, checkpointer, metrics)
and serves the inherited socket; the kernel hands each new connection to one of them.  The workers
are replicas of one broker on one PostgreSQL database, exactly as separate ``broker serve``
processes would be (deploy/README.md, *Replicas*): the log head's row lock serializes their appends.

What the supervisor does, and nothing more:

* SIGTERM or SIGINT: each worker gets SIGTERM once (each drains and writes its last checkpoint);
* SIGHUP: passed on to each worker (each reloads the template folder);
* a worker that exits while the others serve stops them all, and the supervisor exits non-zero
  (fail closed: the orchestrator restarts the whole broker, not a partial one);
* a worker whose supervisor died stops itself (it polls its parent id), so none is left behind.

Workers run in their own process group, so a terminal's Ctrl-C reaches the supervisor alone and
each worker is stopped once, gracefully.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("broker.workers")

# How often a worker checks that its supervisor is still alive (seconds).
PARENT_POLL_SECONDS = 1.0
# Signals the supervisor handles; a worker starts with their default actions.
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket every worker serves (IPv4 or IPv6, as ``host`` says)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # NOTE: accepted connections inherit this (uvicorn sets it only on sockets it binds itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _watch_parent(parent: int) -> None:
    """In a worker: SIGTERM to itself once the supervisor is gone (re-parented: a new parent id)."""
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_POLL_SECONDS)
        log.error("the supervisor (pid %d) is gone: this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _start_worker(number: int, serve: Callable[[int], int]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The worker.  NOTE: os._exit, never a return: the supervisor's stack (argparse, main) is not ours.
    code = 1
    try:
        os.setpgid(0, 0)
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        _watch_parent(parent)
        code = int(serve(number) or 0)
    except BaseException:  # noqa: BLE001 - a worker reports and exits; it never unwinds into the supervisor
        log.exception("broker worker %d failed", number)
    finally:
        logging.shutdown()
        os._exit(code)
    return 0  # pragma: no cover - not reached


def supervise(count: int, serve: Callable[[int], int]) -> int:
    """Fork ``count`` workers, each running ``serve(number)`` (0-based), and wait for them.

    Returns 0 when every worker stopped cleanly after a SIGTERM/SIGINT, otherwise non-zero (a worker
    exited on its own, or with an error).  Call it before any thread or connection exists.
    """
    if count < 1:
        raise ValueError("at least one worker")
    children: dict[int, int] = {}
    stopping = False

    def stop_all(signum: int = signal.SIGTERM) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def on_stop(_signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            stop_all()

    def on_hup(_signum, _frame) -> None:
        stop_all(signal.SIGHUP)

    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    status = 0
    try:
        for number in range(count):
            children[_start_worker(number, serve)] = number
        if stopping:
            stop_all()  # a signal came while the later workers were being started
        log.info("broker serving with %d worker processes (pids %s)", count, ", ".join(map(str, children)))
        while children:
            pid, wait_status = os.wait()
            number = children.pop(pid, None)
            if number is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                log.error("broker worker %d (pid %d) exited with %d: stopping the other workers", number, pid, code)
                stopping = True
                stop_all()
                status = status or code or 1
            elif code:
                status = status or code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status if status >= 0 else 1
