"""Ctrl-C on a command other than `explain` (which handles SIGINT itself): one line on
stderr and exit code 130, not a traceback."""

import os
import signal
import subprocess
import sys
import time


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    # The tiny bench runs for many seconds; SIGINT arrives once TensorFlow is working.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        [sys.executable, "-m", "sightline.cli.main", "bench", "--model", "fashion", "--size",
         "tiny", "--no-end-to-end"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=tmp_path,
        # A shell's background job (CI, nohup) starts with SIGINT ignored, and Python
        # then installs no handler: give the child the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Wait for the first measured row: the interrupt then lands inside TensorFlow's work.
    started = time.monotonic()
    line = process.stdout.readline()
    while line and "inference" not in line and time.monotonic() - started < 300:
        line = process.stdout.readline()
    assert "inference" in line, "the bench printed no row"
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=300)
    assert process.returncode == 130, error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in error, error
    assert lines[0].startswith("sightline bench: interrupted (Ctrl-C)"), error
