"""The README as a map: its table of contents lists exactly its `##` headings, in order,
each with the anchor GitHub gives that heading, and its links into the repository's
Markdown files point at files and headings that exist."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENTS = "Contents"
TOC_ENTRY = re.compile(r"^- \[(?P<text>.+)\]\(#(?P<anchor>[^)]+)\)$")
LOCAL_LINK = re.compile(r"\]\((?P<path>[^)#:\s]+\.md)(?:#(?P<anchor>[^)]+))?\)")


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        return handle.read().splitlines()


def headings(lines, level):
    """The headings of `level` hashes, outside fenced code blocks, in order."""
    found, fenced = [], False
    marker = "#" * level + " "
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith(marker):
            found.append(line[len(marker):].strip())
    return found


def github_anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation other than hyphens and
    underscores dropped (backticks and colons included), spaces turned into hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def table_of_contents(lines):
    """[(text, anchor)] of the list under the Contents heading."""
    start = lines.index(f"## {CONTENTS}") + 1
    entries = []
    for line in lines[start:]:
        if line.startswith("#"):
            break
        match = TOC_ENTRY.match(line)
        if match:
            entries.append((match["text"], match["anchor"]))
        else:
            assert not line.strip(), f"not a contents entry: {line!r}"
    return entries


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Which method to trust: `sightline evaluate`") == \
        "which-method-to-trust-sightline-evaluate"
    assert github_anchor("Finding shortcuts: the audit") == "finding-shortcuts-the-audit"
    assert github_anchor("The max_share rule") == "the-max_share-rule"


def test_contents_list_every_section_in_order_with_working_anchors():
    lines = read("README.md")
    sections = [h for h in headings(lines, 2) if h != CONTENTS]
    entries = table_of_contents(lines)
    assert [text for text, _ in entries] == sections
    assert [anchor for _, anchor in entries] == [github_anchor(h) for h in sections]


def test_links_into_markdown_files_reach_a_file_and_a_heading():
    lines = read("README.md")
    links = [match for line in lines for match in LOCAL_LINK.finditer(line)]
    assert links, "the README links to benchmarks/README.md"
    for link in links:
        assert os.path.isfile(os.path.join(REPO, link["path"])), link["path"]
        if link["anchor"]:
            target = read(link["path"])
            anchors = {github_anchor(h) for level in range(1, 7) for h in headings(target, level)}
            assert link["anchor"] in anchors, (link["path"], link["anchor"])
