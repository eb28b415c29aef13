"""The capture of descriptor 2 and of Python's chatter, and the crash report, in real
processes (pytest's own capture would hide what reaches descriptor 2)."""

import os
import subprocess
import sys
import textwrap

from tests.jobs.jobs import REPO


def _python(code, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_native_lines_and_python_chatter_go_to_the_log_and_the_user_line_to_the_terminal():
    done = _python("""
        import logging, os, sys, warnings
        from sightline.cli.quiet import native_log_captured, python_chatter_captured
        with native_log_captured() as log, python_chatter_captured():
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\\n")
            warnings.warn("a library's warning")
            logging.getLogger("tensorflow").warning("a tensorflow log record")
            logging.getLogger("absl").warning("an absl log record")
            print("sightline explain: error: the one line", file=sys.stderr)
            captured = log.text()
        os.write(2, b"descriptor 2 is the terminal again\\n")
        warnings.warn("a warning after the block")
        print(captured, end="")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[:2] == ["sightline explain: error: the one line",
                                            "descriptor 2 is the terminal again"]
    assert "a warning after the block" in done.stderr  # warnings are restored
    for text in ("oneDNN custom operations", "a library's warning", "a tensorflow log record",
                 "an absl log record"):
        assert text in done.stdout, text
        assert text not in done.stderr, text
    assert "the one line" not in done.stdout


def test_disabled_capture_leaves_everything_on_the_terminal():
    done = _python("""
        import os, warnings
        from sightline.cli.quiet import native_log_captured, python_chatter_captured
        with native_log_captured(enabled=False) as log, python_chatter_captured(enabled=False):
            os.write(2, b"native line\\n")
            warnings.warn("visible warning")
            assert log.text() == ""
    """)
    assert done.returncode == 0, done.stderr
    assert "native line" in done.stderr and "visible warning" in done.stderr


def test_unexpected_error_is_one_line_and_a_crash_report(tmp_path):
    done = _python("""
        import os, sys
        import sightline.cli.inspect as inspect

        def run(args):
            os.write(2, b"native noise before the crash\\n")
            raise RuntimeError("boom\\nsecond line")

        inspect.run = run
        from sightline.cli.main import main
        sys.exit(main(["inspect", sys.argv[1]]))
    """, str(tmp_path))
    lines = done.stderr.splitlines()
    assert done.returncode == 1
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sightline inspect: unexpected error (RuntimeError: boom second "
                               "line); the full traceback is in "), lines[0]
    report = lines[0].rsplit(" ", 1)[1]
    text = open(report).read()
    os.remove(report)
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text
    assert "native noise before the crash" in text.split("--- native log")[1]



def test_a_bug_that_raises_valueerror_or_oserror_is_a_crash_not_the_users_bad_input(tmp_path):
    """Only a UsageError is the user's fault (exit 2); the ValueError or OSError of a bug
    inside sightline is a crash: exit 1 and a report holding its traceback."""
    done = _python("""
        import sys
        import sightline.cli.inspect as inspect
        from sightline.cli.main import main
        from sightline.errors import UsageError

        def internal_bug(args):
            {}.fromkeys([1])[2]  # a KeyError, far from any input check
        def internal_value_error(args):
            int("not a number")  # a ValueError no check of the user's input raised
        def internal_os_error(args):
            open("/nonexistent/sightline-internal/file")
        def bad_input(args):
            raise UsageError("out 'x' is not a run folder; give the folder explain wrote")

        for run in (internal_bug, internal_value_error, internal_os_error, bad_input):
            inspect.run = run
            print(run.__name__, main(["inspect", sys.argv[1]]), file=sys.stderr)
    """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 8, done.stderr
    for (message, code), (name, error) in zip(zip(lines[0:6:2], lines[1:6:2]), [
            ("internal_bug", "KeyError"), ("internal_value_error", "ValueError"),
            ("internal_os_error", "FileNotFoundError")]):
        assert code == f"{name} 1", done.stderr
        assert message.startswith(f"sightline inspect: unexpected error ({error}: "), message
        report = message.rsplit(" ", 1)[1]
        text = open(report).read()
        os.remove(report)
        assert "Traceback (most recent call last)" in text and f"in {name}" in text, text
    assert lines[6:] == ["sightline inspect: error: out 'x' is not a run folder; give the "
                         "folder explain wrote", "bad_input 2"]


def test_argparse_errors_are_one_line():
    done = _python("""
        import sys
        from sightline.cli.main import main
        sys.exit(main(["explain", "--batch-size", "many"]))
    """)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "sightline explain: error: argument --batch-size: invalid int value: 'many' "
        "(see sightline explain --help)"]


def test_verbose_is_accepted_before_and_after_the_command():
    from sightline.cli.main import build_parser
    parser = build_parser()
    assert parser.parse_args(["--verbose", "inspect", "out"]).verbose is True
    assert parser.parse_args(["inspect", "out", "--verbose"]).verbose is True
    assert parser.parse_args(["inspect", "out"]).verbose is False
