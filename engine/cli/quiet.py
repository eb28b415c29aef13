"""Keep TensorFlow's native start-up log off the terminal, and turn a crash into one line.

TensorFlow's C++ runtime writes to file descriptor 2 directly ("WARNING: All log messages
before absl::InitializeLog() is called...", the oneDNN notice, "Could not find cuda
drivers", cuInit errors); TF_CPP_MIN_LOG_LEVEL does not silence all of them. So while a
command runs, descriptor 2 points at a temporary file and Python's `sys.stderr` at a copy
of the real terminal: what sightline prints reaches the user, the runtime's lines are
kept aside and replayed on `--verbose` or written beside the traceback of a crash.
"""

import contextlib
import io
import os
import sys
import tempfile
import time
import traceback


class NativeLog:
    """Descriptor 2 captured to a temporary file; `text()` reads what was captured."""

    def __init__(self):
        self._file = None
        self._saved = None
        self._stderr = None

    def start(self):
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile(prefix="sightline-native-log-")
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            # No real descriptor 2 (embedded interpreters, pytest's capture): leave as is.
            self._file = self._saved = None
            return self
        try:
            on_descriptor_2 = sys.stderr.fileno() == 2
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            on_descriptor_2 = False
        if not on_descriptor_2:
            return self  # sys.stderr is already elsewhere (a test's capture): keep it
        self._stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(self._saved), "wb", buffering=0),
                                      encoding=getattr(self._stderr, "encoding", None) or "utf-8",
                                      errors="backslashreplace", line_buffering=True,
                                      write_through=True)
        return self

    def stop(self):
        if self._saved is None:
            return
        sys.stderr.flush()
        if self._stderr is not None:
            replacement, sys.stderr, self._stderr = sys.stderr, self._stderr, None
            replacement.close()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None

    def text(self):
        if self._file is None:
            return ""
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def native_log_captured(enabled=True):
    """Capture descriptor 2 for the block (unless `enabled` is False); yields the log."""
    log = NativeLog()
    if enabled:
        log.start()
    try:
        yield log
    finally:
        log.stop()


def write_crash_report(command, error, native_log):
    """The traceback and the captured native log in a file; returns its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    handle, path = tempfile.mkstemp(prefix=f"sightline-{command}-crash-{stamp}-", suffix=".log")
    with os.fdopen(handle, "w", encoding="utf-8") as report:
        report.write(f"sightline {command}: {type(error).__name__}: {error}\n\n")
        report.write("".join(traceback.format_exception(error)))
        report.write("\n--- native log (TensorFlow runtime) ---\n")
        report.write(native_log)
    return path
