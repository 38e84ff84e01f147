"""Ctrl-C and SIGTERM end a run cleanly: stop at the next event, keep the trace, say so.

The first SIGINT (Ctrl-C) or SIGTERM (sent by ``timeout``, ``docker stop``, SLURM) asks the running
simulation to stop; the run then finishes its files as at any other stop, with ``stop_reason:
interrupted``. A second signal acts as usual (KeyboardInterrupt, or termination), for a user who
does not want to wait; the parts already on disk stay readable.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
"""Exit status of a CLI run stopped by each signal (128 + its number, as shells report it)."""


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[str], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``request_stop(signal name)`` once.

    Signal handlers can only be set from the main thread; elsewhere (a sweep worker thread, a
    notebook's background thread) the block runs with the handlers it found.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, _frame: object) -> None:
        for sig, handler in previous.items():  # a second signal does what it did before
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        request_stop(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
