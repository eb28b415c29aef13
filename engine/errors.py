"""Whose fault an error is. `UsageError` is the user's: a bad option, a missing or
unreadable file, data the model cannot take. The command line turns it into one line on
stderr and exit 2; anything else reaching it is sightline's own bug, written to a crash
report with its traceback (exit 1).

The lowest room, below the kernels, so that every room may raise it. It is a ValueError
and a TypeError both, so that callers of the Python API who catch either (as they did
before it existed) still catch it.
"""


class UsageError(ValueError, TypeError):
    """Bad input from the user: the message says what is wrong, what was received and how
    to fix it, on one line."""
