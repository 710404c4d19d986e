"""Signal handling for processes that hold emulated networks (stdlib only).

Two things every such process needs:

- :func:`install`: handlers that a fork()ed child never runs as its parent would.
  pyroute2 opens its sockets in other network namespaces from children it fork()s without
  exec, and stops them with SIGTERM. Such a child keeps its parent's Python signal handlers:
  a handler that raises would unwind a copy of the parent's stack in the child (running its
  ``finally`` blocks: tearing down the parent's network), and one that calls into a library
  (Ray's) acts on state the child shares with its parent. So every process that holds an
  :class:`~emulation.network.EmulatedNetwork` and handles a signal installs its handler
  through :func:`install`.
- :func:`deferred`: a block that a signal cannot cut short (teardown, a store's write). A
  SIGINT / SIGTERM / SIGHUP that arrives inside is held and acted on, once, when the block
  ends; listeners (:func:`on_held`) hear of it at once, so that a CLI can say what it is
  waiting for and bound the wait.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_held: list[int] = []                        # signals that arrived inside deferred(), in order
_depth = 0                                   # deferred() blocks open in the main thread
_listeners: list[Callable[[int], None]] = []


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


def on_held(listener: Callable[[int], None]) -> None:
    """Call ``listener(signum)`` for every signal a :func:`deferred` block holds, as it
    arrives (from the signal handler, in the main thread: it must note, never raise)."""
    if listener not in _listeners:
        _listeners.append(listener)


def _hold(signum, _frame) -> None:
    _held.append(signum)
    for listener in list(_listeners):
        listener(signum)


@contextlib.contextmanager
def deferred(*signums: int) -> Iterator[None]:
    """Run the block without being cut short by ``signums`` (default: SIGINT, SIGTERM,
    SIGHUP): one that arrives is held, and the first held is delivered to the handler the
    block found (raised again) as soon as the outermost block ends, whether the block ended
    well or not. Nested blocks are part of the outermost one. Python runs signal handlers
    only in the main thread, so from another thread the block runs as it is (a signal cannot
    interrupt it there); a child fork()ed inside exits on a held signal as :func:`install`'s
    do."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    # a handler not installed from Python (None) cannot be put back: leave that signal alone
    old = {s: h for s in (signums or STOP_SIGNALS) if (h := signal.getsignal(s)) is not None}
    install(_hold, *old)
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for s, h in old.items():
            signal.signal(s, h)
        held = list(_held)
        _held.clear()
        if held:
            signal.raise_signal(held[0])
