"""One writer per worker and output folder: a lock the kernel holds for the process.

`flock` on a file in the output folder, one per worker index: a second process started
on the same --out and worker is refused with the holder's pid, and the kernel drops the
lock when its holder ends in any way (kill -9 too), so a stale lock never blocks a
resume. On NFS, Linux maps flock onto the server's byte-range locks.
"""

import fcntl
import os
import socket

from sightline.errors import UsageError


def lock_path(out, worker):
    return os.path.join(out, f".worker-{worker:05d}.lock")


def check_not_locked(out, worker):
    """Refuse at once, before any heavy start-up, when a live process holds worker
    `worker`'s lock on `out`. Creates and changes nothing."""
    try:
        descriptor = os.open(lock_path(out, worker), os.O_RDONLY)
    except OSError:
        return  # no lock file (or no folder): nobody has written here
    try:
        _take(descriptor, out, worker)
    finally:
        os.close(descriptor)


def _take(descriptor, out, worker):
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "unknown"
        raise UsageError(f"output folder {out!r} is being written by another process "
                         f"(worker {worker}, pid {holder}); wait for it to end, or pass "
                         "another --out or --worker") from None


def lock_worker(out, worker):
    """Take worker `worker`'s lock on `out` (which exists); returns the descriptor that
    holds it. Raises ValueError naming the holder when another process has it."""
    path = lock_path(out, worker)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take(descriptor, out, worker)
    except BaseException:
        os.close(descriptor)
        raise
    # Written after the lock is held, so a refused process reads a live holder's pid.
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return descriptor


def unlock_worker(descriptor):
    if descriptor is not None:
        os.close(descriptor)  # closing drops the flock
