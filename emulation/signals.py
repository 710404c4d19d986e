"""Signal handlers that a fork()ed child never runs as its parent would (stdlib only).

pyroute2 opens its sockets in other network namespaces from children it fork()s without
exec, and stops them with SIGTERM. Such a child keeps its parent's Python signal handlers: a
handler that raises would unwind a copy of the parent's stack in the child (running its
``finally`` blocks: tearing down the parent's network), and one that calls into a library
(Ray's) acts on state the child shares with its parent. So every process that holds an
:class:`~emulation.network.EmulatedNetwork` and handles a signal installs its handler
through :func:`install`.
"""
from __future__ import annotations

import os
import signal


def fork_safe(handler):
    """``handler`` for the process calling this; in any process fork()ed from it, a handler
    that exits at once (``os._exit``) with 128 + the signal's number, as the signal asks."""
    owner = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)
        return handler(signum, frame)

    return on_signal


def install(handler, *signums: int) -> None:
    """Handle each of ``signums`` with :func:`fork_safe` (``handler``); like
    :func:`signal.signal`, only from the main thread."""
    safe = fork_safe(handler)
    for signum in signums:
        signal.signal(signum, safe)
