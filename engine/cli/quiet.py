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
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings

# Loggers of the libraries under sightline: their records go to the captured log.
LIBRARY_LOGGERS = ("tensorflow", "absl", "keras", "tf_keras", "h5py", "jax")


class NativeLog:
    """Descriptor 2 captured to a temporary file; `text()` reads what was captured."""

    def __init__(self):
        self._file = None
        self._saved = None
        self._stderr = None

    def start(self):
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            self._file = tempfile.TemporaryFile(prefix="sightline-native-log-")
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            # No real descriptor 2 (embedded interpreters): leave it as it is.
            if self._saved is not None:
                os.close(self._saved)
            if self._file is not None:
                self._file.close()
            self._file = self._saved = None
            return self
        try:
            on_descriptor_2 = sys.stderr.fileno() == 2
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            on_descriptor_2 = False
        if not on_descriptor_2:
            return self  # sys.stderr is already elsewhere (a test's capture): keep it
        self._stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(self._saved), "wb"),
                                      encoding=getattr(self._stderr, "encoding", None) or "utf-8",
                                      errors="backslashreplace", line_buffering=True,
                                      write_through=True)
        return self

    def stop(self):
        if self._saved is None:
            return
        try:
            sys.__stderr__.flush()  # Python's own buffer of descriptor 2: into the file
        except (OSError, ValueError, AttributeError):
            pass
        sys.stderr.flush()
        if self._stderr is not None:
            replacement, sys.stderr, self._stderr = sys.stderr, self._stderr, None
            replacement.close()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None

    def text(self):
        if self._file is None or self._file.closed:
            return ""
        try:
            sys.__stderr__.flush()
        except (OSError, ValueError, AttributeError):
            pass
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode("utf-8", "backslashreplace")

    def close(self):
        if self._file is not None:
            self._file.close()


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
        log.close()


@contextlib.contextmanager
def python_chatter_captured(enabled=True):
    """Python warnings and the libraries' log records go to descriptor 2 (the captured
    native log, via sys.__stderr__) instead of the terminal, for the block."""
    if not enabled:
        yield
        return
    previous_showwarning = warnings.showwarning
    saved = {}
    handler = _CapturedHandler()

    def show_warning(message, category, filename, lineno, file=None, line=None):
        _write_captured(warnings.formatwarning(message, category, filename, lineno, line))

    def unraisable(hook_arguments):
        # "Exception ignored in ..." (h5py objects freed after a failed write, ...).
        _write_captured(f"Exception ignored in: {hook_arguments.object!r}: "
                        f"{hook_arguments.exc_type.__name__}: {hook_arguments.exc_value}\n")

    def print_exception(kind, value, trace):
        # Cython's __dealloc__ (h5py) prints through sys.excepthook before the unraisable
        # hook; the command itself catches every exception, so nothing else comes here.
        _write_captured("".join(traceback.format_exception(kind, value, trace)))

    previous_unraisablehook, previous_excepthook = sys.unraisablehook, sys.excepthook
    warnings.showwarning = show_warning
    sys.unraisablehook = unraisable
    sys.excepthook = print_exception
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.propagate
        logger.propagate = False
        logger.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = previous_showwarning
        sys.unraisablehook = previous_unraisablehook
        sys.excepthook = previous_excepthook
        for name, propagate in saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.propagate = propagate


class _CapturedHandler(logging.Handler):
    def emit(self, record):
        try:
            _write_captured(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - a log line must never end the command
            pass


def _write_captured(text):
    stream = sys.__stderr__
    if stream is not None:
        stream.write(text)


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
