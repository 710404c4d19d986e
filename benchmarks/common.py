"""What the benchmark drivers share."""
from __future__ import annotations

import signal

from emulation import signals


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt in this process, so that every `with`/finally tears down
    what it built. A forked helper (pyroute2 opens netns sockets from fork()ed children and
    stops them with SIGTERM) inherits the handler: it must die, never unwind our stack."""

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signals.install(on_term, signal.SIGTERM)
