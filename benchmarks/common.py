"""What the benchmark drivers share."""
from __future__ import annotations

import os
import signal


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt in this process, so that every `with`/finally tears down
    what it built. A forked helper (pyroute2 opens netns sockets from fork()ed children and
    stops them with SIGTERM) inherits the handler: it must die, never unwind our stack."""
    main_pid = os.getpid()

    def on_term(signum, _frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
