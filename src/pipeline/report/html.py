"""The page: one self-contained HTML file (inline CSS, PNG figures as base64 data URIs, no script, no network).

Every number in a table is a cell that says where it comes from, so a reader (or a test) can check it against the
file it was read from: `data-source` names the file, relative to the report's folder (`metrics.json`,
`leaderboard.csv`, `history.csv`, `nights/<night>/summary.json`), and `data-path` is a JSON list that walks into
it: keys for a JSON file, `[row, column]` for a CSV file (row: 0-based position among its data rows), `[line, key]`
for history.jsonl. The text is
the value rounded to the decimals shown (metrics and shares 4, seconds 2, counts 0); a missing value is `n/a`.
Numbers computed for the page rather than read (the popularity deciles, epochs run) carry `data-derived` instead.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field

MISSING = "n/a"

STYLE = """
body { margin: 0; background: #f6f7f9; color: #1d2430; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 2px 0; color: #4a5568; }
nav { margin: 14px 0 6px; }
nav a { display: inline-block; margin: 0 12px 4px 0; color: #2b6cb0; text-decoration: none; }
section { background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 16px 20px; margin: 16px 0; }
section h2 { font-size: 17px; margin: 0 0 8px; }
section h3 { font-size: 14px; margin: 14px 0 6px; }
p.note { color: #4a5568; margin: 4px 0 10px; }
figure { margin: 8px 0 12px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #4a5568; font-size: 12.5px; margin-top: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 4px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e6e9ef; text-align: left; white-space: nowrap; }
th { background: #f0f2f6; font-weight: 600; white-space: normal; vertical-align: bottom; }
th.group { text-align: center; border-left: 2px solid #fff; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table[data-table="protocol"] td.num { text-align: left; }
tr.best td { background: #f2f8ec; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #2b6cb0; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; }
.tag.promoted { background: #dcefd3; } .tag.kept_champion { background: #fbe3c8; }
.tag.failed, .tag.bad_input { background: #f8d4d4; } .tag.nothing_new { background: #e8eaee; }
"""


@dataclass
class Num:
    """A number cell: `value` as read from `source` at `path`, shown with `decimals` decimals."""

    value: object
    source: str
    path: list
    decimals: int = 4


@dataclass
class Derived:
    """A number computed for the page (not stored in any file); `attributes` say what it is (data-* keys)."""

    value: float
    attributes: dict
    decimals: int = 4


@dataclass
class Raw:
    """A cell holding markup built by this module (a tag, a link), inserted as it is."""

    markup: str


@dataclass
class Section:
    anchor: str
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, *parts: str) -> Section:
        self.parts.extend(parts)
        return self


def number_text(value, decimals: int) -> str:
    """The shown text of a number: `decimals` places (a whole number for 0), `n/a` when missing or not finite."""
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        number = float(value)
    except (TypeError, ValueError):
        return MISSING
    if not math.isfinite(number):
        return MISSING
    return str(int(round(number))) if decimals == 0 else f"{number:.{decimals}f}"


def cell(content) -> str:
    """One table cell: a `Num`, a `Derived`, `Raw` markup, or anything else shown as escaped text."""
    if isinstance(content, Num):
        path = html.escape(json.dumps(content.path), quote=True)
        return (f'<td class="num" data-source="{html.escape(content.source, quote=True)}" data-path="{path}">'
                f"{number_text(content.value, content.decimals)}</td>")
    if isinstance(content, Derived):
        attributes = "".join(f' data-{key}="{html.escape(str(value), quote=True)}"' for key, value in content.attributes.items())
        return f'<td class="num"{attributes}>{number_text(content.value, content.decimals)}</td>'
    if isinstance(content, Raw):
        return f"<td>{content.markup}</td>"
    return f"<td>{'' if content is None else html.escape(str(content))}</td>"


def table(name: str, header: list[str], rows: list[list], row_classes: list[str] | None = None,
          groups: list[tuple[str, int]] | None = None) -> str:
    """A table named `name` (its `data-table`), scrolling sideways when wider than the page; `groups`, (title,
    columns spanned) pairs, add a header row above `header`."""
    # Long column names (test_hit_rate@10_seen_kept) may break after an underscore rather than widen the table.
    head = "".join(f"<th>{html.escape(str(title)).replace('_', '_<wbr>')}</th>" for title in header)
    if groups:
        spans = "".join(f'<th colspan="{span}" class="group">{html.escape(title)}</th>' for title, span in groups)
        head = f"{spans}</tr><tr>{head}"
    body = []
    for index, row in enumerate(rows):
        css = f' class="{html.escape(row_classes[index], quote=True)}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>" + "".join(cell(value) for value in row) + "</tr>")
    return (f'<div class="scroll"><table data-table="{html.escape(name, quote=True)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def figure(name: str, png: bytes, alt: str, caption: str = "") -> str:
    """A PNG figure embedded as a data URI; `name` is its `data-figure`."""
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure data-figure="{html.escape(name, quote=True)}"><img src="{source}" alt="{html.escape(alt, quote=True)}">'
            f"{text}</figure>")


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def heading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def details(summary: str, *parts: str) -> str:
    """Folded content, opened by a click (HTML's own <details>: no script)."""
    return f"<details><summary>{html.escape(summary)}</summary>{''.join(parts)}</details>"


def tag(status: str) -> str:
    return f'<span class="tag {html.escape(status, quote=True)}">{html.escape(status.replace("_", " "))}</span>'


def link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def page(title: str, subtitle: list[str], sections: list[Section], kind: str) -> str:
    """The whole document; `kind` (run, compare, nightly) is the body's `data-report`."""
    nav = "".join(f'<a href="#{section.anchor}">{html.escape(section.title)}</a>' for section in sections)
    lines = "".join(f"<p>{line}</p>" for line in subtitle)  # subtitle lines are built from escaped parts
    body = "".join(
        f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>{"".join(section.parts)}</section>'
        for section in sections
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f'<body data-report="{kind}"><main><header><h1>{html.escape(title)}</h1>{lines}</header>'
        f"<nav>{nav}</nav>{body}</main></body></html>\n"
    )


def escaped(text: str) -> str:
    return html.escape(str(text))
