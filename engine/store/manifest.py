"""manifest.json: run provenance and the shard table, rewritten atomically.

Each complete shard's record (shards/*.json) is the source of truth; the manifest
gathers them, so any worker (or the index step) can rewrite it from what is on disk.
"""

import hashlib
import json
import os

from sightline.store.shards import (INDEX_FILE, MANIFEST_FILE, SHARD_DIRECTORY, shard_name, verify_shard,
                           write_json_atomic)


def read_manifest(out):
    path = os.path.join(out, MANIFEST_FILE)
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{out!r} holds no {MANIFEST_FILE}: it is not the output folder of a "
                         "sightline explain run") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path!r} is unreadable ({error})") from None


def fingerprint_hash(run):
    """sha256 of the run description: what every shard of this run carries in its record."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode("utf-8")).hexdigest()


def write_manifest(out, run, provenance, ranges, *, fingerprint=None, unread=()):
    """Write the manifest from the run, its provenance and the shards' (start, stop).

    fingerprint: the run's fingerprint hash; a shard whose record carries another is
    listed as pending. None (output written without fingerprints) skips that check.
    unread: skipped entries of source files that are no sample (index None).
    """
    shards, skipped = [], list(unread)
    num_shards = len(ranges)
    for shard, (start, stop) in enumerate(ranges):
        record, _ = verify_shard(out, shard, num_shards, checksum=False, fingerprint=fingerprint)
        entry = {"shard": shard, "file": f"{SHARD_DIRECTORY}/{shard_name(shard, num_shards)}.h5",
                 "sample_start": start, "sample_stop": stop, "state": "pending"}
        if record is not None:
            entry.update(state="complete", num_samples=record["num_samples"],
                         sha256=record["sha256"], worker=record.get("worker"))
            skipped.extend(record.get("skipped", []))
        shards.append(entry)
    write_json_atomic(os.path.join(out, MANIFEST_FILE), {
        "format": "sightline/1",
        "run": run,
        "fingerprint": fingerprint,
        **provenance,
        "num_shards": num_shards,
        "shards_complete": sum(e["state"] == "complete" for e in shards),
        "num_skipped": len(skipped),
        "index": INDEX_FILE if os.path.exists(os.path.join(out, INDEX_FILE)) else None,
        "shards": shards,
        "skipped": skipped,
    })


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
