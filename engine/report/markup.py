"""The pieces every page of the report shares: its style sheet, tables, number format,
section anchors, embedded pictures, and the write that never leaves half a page. The
audit page (page.py), its cluster cards (clusters.py) and the evaluation page
(evaluation.py) all use them, so none of those needs another."""

import base64
import html
import os
import re

import numpy as np

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1180px; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.flagged { color: #b00020; font-weight: bold; } .ok { color: #2e7d32; font-weight: bold; }
.verdict { font-size: 1.15em; padding: 8px 12px; border-left: 5px solid #999; background: #fafafa; }
.verdict.flagged { border-color: #b00020; } .verdict.unchecked { border-color: #b26a00; } ul.reasons { margin: 4px 0; } .verdict.ok { border-color: #2e7d32; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def section_anchor(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "section"


def embed_png(path, alt):
    """A <figure> holding the PNG at `path` as a data URI, captioned, linking the file."""
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    name = os.path.basename(path)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f'<figcaption class="note">{html.escape(alt)} (<a href="{html.escape(name)}">'
            f'{html.escape(name)}</a>)</figcaption></figure>')


def not_read(what):
    """The note that stands where a picture read from the run's files would be, when the
    report was written without its reader (write_report's `inputs`)."""
    return (f'<p class="note">{html.escape(what)}: not drawn (the report was written '
            'without the run\'s files: pass inputs=ReportInputs())</p>')


def fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"  # NaN: nothing to average (e.g. a class whose maps are all zero)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def table(header, rows, text_columns=(0,)):
    out = ["<table><tr>"]
    out += [f'<th class="{"text" if i in text_columns else ""}">{html.escape(h)}</th>'
            for i, h in enumerate(header)]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="{"text" if i in text_columns else ""}">{cell}</td>'
            for i, cell in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_page(path, page):
    """Write an HTML page under a temporary name and rename it: never half a page."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(temporary, path)
    return path
