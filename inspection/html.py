"""The inspect report as one self-contained HTML file: the same tables as the terminal, and
every plot embedded as a base64 PNG data URI, so the file can be mailed or archived and opened
in any browser without the cache, a server or a network."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from distill.inspection.plots import PLOTS
from distill.inspection.sections import Section, sections

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    labelled = (f"; {report['labelled_rows']:,} labelled rows given"
                if "labelled_rows" in report else "")
    parts = [f"<h1>distill cache report</h1><p>generated {generated}{labelled}</p>"]
    parts += [_table(s) for s in sections(report)]
    if plots:
        parts.append("<h2>plots</h2>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        caption = html.escape(PLOTS[name])
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}" '
                     f'data-plot="{name}"><figcaption>{name}: {caption}</figcaption></figure>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>distill cache report</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _table(section: Section) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in section.headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in section.rows)
    return f"<h2>{html.escape(section.title)}</h2><table><tr>{head}</tr>{rows}</table>"
