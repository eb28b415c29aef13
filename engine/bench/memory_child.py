"""One dataset job in a process of its own, for its peak memory (run by
sightline.bench.end_to_end.peak_memory):

    python -m sightline.bench.memory_child '{"model_path": ..., "data": ..., "out": ...,
                                            "methods": [...], "batch": 8, "options": {}}'

prints one JSON line: {"images", "vmhwm_kb", "ru_maxrss_kb"}.
"""

import json
import resource
import sys

from sightline.bench.end_to_end import job_config
from sightline.jobs.runner import run_job


def main(argument):
    summary = run_job(job_config(**json.loads(argument)))
    with open("/proc/self/status") as handle:
        high_water = [line for line in handle if line.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"images": summary.images, "vmhwm_kb": int(high_water),
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main(sys.argv[1])
