"""manifest.json: run provenance and the shard table, rewritten atomically.

Each complete shard's record (shards/*.json) is the source of truth; the manifest
gathers them, so any worker (or the index step) can rewrite it from what is on disk.
During a run the table lives in memory (ManifestWriter): a finished shard costs no read
of the others' records.
"""

import hashlib
import json
import math
import os
import threading
import time

from sightline.errors import UsageError
from sightline.store.files import write_json_atomic
from sightline.store.shards import INDEX_FILE, MANIFEST_FILE, SHARD_DIRECTORY, shard_name, verify_shard


def read_manifest(out):
    path = os.path.join(out, MANIFEST_FILE)
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{out!r} holds no {MANIFEST_FILE}: it is not the output folder of a "
                         "sightline explain run") from None
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path!r} is unreadable ({error})") from None


def fingerprint_hash(run):
    """sha256 of the run description: what every shard of this run carries in its record."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode("utf-8")).hexdigest()


class ManifestWriter:
    """The manifest of one run, its shard table kept in memory.

    A finished shard updates its own entry (shard_finished: O(1), no file read) and the
    file is rewritten from what is known, at most every `interval` seconds; write()
    rewrites it now. reload() reads shard records from disk: at the start of a run and
    at its end, once per shard, so a run of S shards reads each record O(1) times, not
    O(S). A worker of a multi-worker job learns of the others' shards only at a reload;
    the index step and `sightline index` rebuild the table from every record.
    """

    def __init__(self, out, run, provenance, ranges, *, fingerprint=None, interval=0.0,
                 unread=()):
        self.out, self.run, self.provenance = out, run, provenance
        self.unread = list(unread)  # skipped entries of source files that are no sample
        self.ranges = list(ranges)
        self.fingerprint = fingerprint  # a record carrying another is listed as pending
        self.interval = interval
        self.records = [None] * len(self.ranges)
        self._lock = threading.Lock()
        self._written = -math.inf

    def reload(self, shards=None):
        """Read the records of `shards` (default: every shard) from disk."""
        with self._lock:
            for shard in range(len(self.ranges)) if shards is None else shards:
                self.records[shard], _ = verify_shard(self.out, shard, len(self.ranges),
                                                      checksum=False,
                                                      fingerprint=self.fingerprint)

    def shard_finished(self, record):
        """A shard this process wrote; its record as the shard writer made it."""
        with self._lock:
            self.records[record["shard"]] = record
            if time.monotonic() - self._written >= self.interval:
                self._write()

    def write(self):
        with self._lock:
            self._write()

    def _write(self):
        shards, skipped = [], list(self.unread)
        num_shards = len(self.ranges)
        for shard, (start, stop) in enumerate(self.ranges):
            record = self.records[shard]
            entry = {"shard": shard,
                     "file": f"{SHARD_DIRECTORY}/{shard_name(shard, num_shards)}.h5",
                     "sample_start": start, "sample_stop": stop, "state": "pending"}
            if record is not None:
                entry.update(state="complete", num_samples=record["num_samples"],
                             sha256=record["sha256"], worker=record.get("worker"))
                skipped.extend(record.get("skipped", []))
            shards.append(entry)
        write_json_atomic(os.path.join(self.out, MANIFEST_FILE), {
            "format": "sightline/1",
            "run": self.run,
            "fingerprint": self.fingerprint,
            **self.provenance,
            "num_shards": num_shards,
            "shards_complete": sum(e["state"] == "complete" for e in shards),
            "num_skipped": len(skipped),
            "index": INDEX_FILE if os.path.exists(os.path.join(self.out, INDEX_FILE)) else None,
            "shards": shards,
            "skipped": skipped,
        })
        self._written = time.monotonic()


def write_manifest(out, run, provenance, ranges, *, fingerprint=None, unread=()):
    """Write the manifest from the run, its provenance and the shards' (start, stop),
    reading every shard's record from disk.

    fingerprint: the run's fingerprint hash; a shard whose record carries another is
    listed as pending. None (output written without fingerprints) skips that check.
    unread: skipped entries of source files that are no sample (index None).
    """
    manifest = ManifestWriter(out, run, provenance, ranges, fingerprint=fingerprint,
                              unread=unread)
    manifest.reload()
    manifest.write()


def refresh_manifest(out):
    """Rewrite the manifest from the shard records now on disk."""
    manifest = read_manifest(out)
    provenance = {k: v for k, v in manifest.items()
                  if k not in ("format", "run", "fingerprint", "num_shards", "shards_complete",
                               "num_skipped", "index", "shards", "skipped")}
    ranges = [(e["sample_start"], e["sample_stop"]) for e in manifest["shards"]]
    write_manifest(out, manifest["run"], provenance, ranges,
                   fingerprint=manifest.get("fingerprint"),
                   unread=[s for s in manifest["skipped"] if s.get("index") is None])
    return read_manifest(out)
