"""Stopping a job cleanly: the first SIGINT or SIGTERM asks the run to stop after the
batch in flight (finished shards are kept, the next run continues); a second one stops
at once. The exit code says which signal it was (130, 143)."""

import signal
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum}")
        self.exit_code = EXIT_CODES.get(signum, 1)


def install_signal_handlers(stop_signal):
    """Handlers that append the signal number to `stop_signal`; returns the previous
    handlers (None off the main thread, where Python cannot install any)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop_signal:  # a second signal: stop now
            raise KeyboardInterrupt
        stop_signal.append(signum)
        print("sightline: stopping after this batch (signal again to stop at once)",
              file=sys.stderr, flush=True)

    return {signum: signal.signal(signum, handler) for signum in EXIT_CODES}


def restore_signal_handlers(previous):
    if previous:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
