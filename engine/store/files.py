"""Files that readers may see at any moment: JSON written atomically, temporary names
that say who writes them, checksums. Shared by the shard writer, the manifest and
whoever writes a result beside a run (the audit's audit.json), without reaching into
the shard format itself.
"""

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time

from sightline.errors import UsageError

TEMPORARY_MARK = ".tmp-"
# Workers on other nodes share the folder, and whether their process is alive cannot be
# asked from here: their temporaries go only once untouched this long. Every write
# behind a shared temporary (the manifest, index.h5) takes seconds at most.
FOREIGN_TEMPORARY_SECONDS = 3600
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def sha256_of(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_path(path):
    """The name `path` is written under before its rename. It names the writer (pid,
    thread, host) so that a later run can tell a dead writer's leftover from a file
    that a live worker is still writing."""
    return f"{path}{TEMPORARY_MARK}{os.getpid()}-{threading.get_ident()}@{_HOST}"


def _temporary_writer(name):
    """(pid, thread, host) from a temporary_path name, or None when it is not one."""
    match = re.search(re.escape(TEMPORARY_MARK) + r"(\d+)-(\d+)@([^/]+)$", name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3)


def writer_is_gone(path):
    """True when nobody can still be writing this temporary file."""
    writer = _temporary_writer(os.path.basename(path))
    if writer is not None and writer[2] == _HOST:
        pid, thread, _ = writer
        if pid == os.getpid():
            return thread not in {t.ident for t in threading.enumerate()}
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
        return False
    try:
        return time.time() - os.stat(path).st_mtime > FOREIGN_TEMPORARY_SECONDS
    except FileNotFoundError:
        return False


def remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_json_atomic(path, payload):
    """Write JSON under a temporary name, fsync, rename: readers see old or new, whole."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(os.path.dirname(path) or ".")


def fsync_directory(path):
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class OutOfSpace(OSError):
    """The disk (or quota) filled up while a run wrote its output."""


def is_out_of_space(error):
    """True when `error`, or an error it was raised from, says the disk or quota is full.
    h5py reports it inside its message ("errno = 28"), not in `errno`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        # h5py raises RuntimeError as well as OSError for a failed write or flush.
        if isinstance(error, (OSError, RuntimeError)) and (
                getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                or "No space left on device" in str(error) or "errno = 28," in str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def check_writable_folder(path, what="--out"):
    """Raise ValueError unless `path` is a folder, or can be made one, that this process
    can write in. Creates nothing that stays: the probe file is removed at once."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"output {path!r} is a file, not a folder; pass a folder for {what}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"output folder {path!r} is not writable: {existing!r} is a file; "
                         f"pass a folder for {what}")
    if existing == path:
        # An existing folder (perhaps another run's) is not touched, not even its mtime.
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"output folder {path!r} is not writable; choose another {what} "
                             "or fix its permissions")
        return
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".sightline-write-test-", dir=existing)
        os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"output folder {path!r} is not writable ({error.strerror} in "
                         f"{existing!r}); choose another {what} or fix its permissions") from None
