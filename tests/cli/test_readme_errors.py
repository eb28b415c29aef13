"""The README says what the code does: its exit-code table under "### Errors" is the
command's EXIT_CODES, and its option list gives every --precision the configuration
accepts."""

import os
import re

from sightline.cli.main import EXIT_CODES
from sightline.config import PRECISIONS
from tests.jobs.jobs import REPO


def _readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        return handle.read()


def _section(text, heading):
    """The lines under a Markdown heading, up to the next heading of any level."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start:end]


def test_the_readme_exit_code_table_is_the_commands():
    rows = [re.fullmatch(r"\| (\d+) \| (.+) \|", line) for line in _section(_readme(), "### Errors")]
    table = {int(row[1]): row[2] for row in rows if row}
    assert table == EXIT_CODES


def test_the_readme_lists_every_precision():
    # The option lists spell choices a|b|c; prose such as `--precision auto` is not one.
    found = re.findall(r"`--precision (\w+(?:\|\w+)+)`", _readme())
    assert found, "the README lists no --precision choices"
    for listed in found:
        assert tuple(listed.split("|")) == PRECISIONS, listed
