"""Timing: start-up (the first call) apart from the steady state (the median of several
timed calls after a warm-up call), optionally in alternation with a reference call."""

import statistics
import time

MAX_REPS = 7


def measure(call, seconds, warmup=True, paired=None):
    """(first result, start-up seconds, median steady seconds, repetitions).

    paired: another (already warm) call timed in alternation with this one, so that
    the ratio of the two stays right when the machine's load changes during the run;
    its median goes to measure.paired_median.
    """
    started = time.perf_counter()
    result = call()
    startup = time.perf_counter() - started
    if warmup:
        started = time.perf_counter()
        call()
        first = time.perf_counter() - started
    else:
        first = startup
    reps = max(1, min(MAX_REPS, int(seconds / max(first, 1e-6))))
    if paired is not None:
        reps = max(3, reps)
    times, paired_times = [], []
    for _ in range(reps):
        if paired is not None:
            started = time.perf_counter()
            paired()
            paired_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    measure.paired_median = statistics.median(paired_times) if paired_times else None
    return result, startup, statistics.median(times), reps


measure.paired_median = None
