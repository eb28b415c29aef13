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
from sightline.store.layout import (INDEX_FILE, MANIFEST_FILE, REOPENABLE_SOURCES,
                                    SHARD_DIRECTORY, SOURCE_SPEC)
from sightline.store.shards import shard_name, verify_shard


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


def previous_manifest(out):
    """The manifest a former run left in `out`, or None when there is none or it cannot be
    read: a job about to (re)write the folder only compares against it."""
    try:
        return read_manifest(out)
    except ValueError:
        return None


def other_run_settings(out, run):
    """The settings in which the run already in `out` differs from `run` (empty when
    there is none, or it is the same run). Reads only."""
    if not os.path.exists(os.path.join(out, MANIFEST_FILE)):
        return []
    # An unreadable manifest is another run's until proven otherwise: every setting differs.
    before = (previous_manifest(out) or {}).get("run", {})
    return sorted(k for k in set(run) | set(before) if run.get(k) != before.get(k))


def remove_stale_shards(out, mine, num_shards):
    """Make room for a new run in `out`: delete this worker's own shards (`mine`) and every
    shard of another shard count, and the index that stitched them. Shards of the same
    count that other workers own are theirs to replace."""
    folder = os.path.join(out, SHARD_DIRECTORY)
    own = {shard_name(s, num_shards) for s in mine}
    suffix = f"-of-{num_shards:05d}"
    for name in os.listdir(folder):
        stem = name.split(".")[0]
        if stem in own or (stem.startswith("shard-") and not stem.endswith(suffix)):
            os.remove(os.path.join(folder, name))
    if os.path.exists(os.path.join(out, INDEX_FILE)):
        os.remove(os.path.join(out, INDEX_FILE))


def source_entry(kind, spec):
    """The manifest's structured record of the run's source (provenance, not fingerprint:
    an old run's resume stays the same run)."""
    return {SOURCE_SPEC: {"kind": str(kind), "spec": str(spec)}}


def run_source(manifest):
    """(kind, spec) that open_source takes to open the run's source again, or None when the
    manifest names none sightline can reopen. Runs written before the structured record
    fall back to their description ("npy /abs/x.npy", "h5 /abs/x.h5:images", ...)."""
    recorded = manifest.get(SOURCE_SPEC)
    if isinstance(recorded, dict) and recorded.get("spec"):
        kind, spec = recorded.get("kind"), recorded["spec"]
    else:
        kind, _, spec = str((manifest.get("run") or {}).get("source") or "").partition(" ")
    return (kind, spec) if kind in REOPENABLE_SOURCES and spec else None


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
