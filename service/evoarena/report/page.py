"""The HTML document of `evoarena report`: sections of figures (PNG data URIs), tables and notes,
in the order they were added, under a summary table; nothing but the page itself is fetched.

Layout: a figure shows at its own size, up to the page's width; a section of several pictures
(the encounter matrices, the generator samples: one per round) lays them out in a grid of columns
of at least 360 px, so that eight rounds take a few rows, not eight screens."""

from __future__ import annotations

import base64
import html
import time

from evoarena.report.plots import png


class Page:
    """Sections of figures, text, tables and notes, in the order they were added."""

    def __init__(self):
        self.sections: dict[str, list[str]] = {}

    def figure(self, title: str, fig, caption: str = "", section: str | None = None) -> None:
        """`fig` as a PNG data URI, in section `section` (default: its own, named `title`)."""
        self.image(title, png(fig), caption, section)

    def image(self, title: str, picture: bytes, caption: str = "", section: str | None = None) -> None:
        """A PNG (bytes) as a data URI, in section `section` (default: its own, named `title`)."""
        uri = "data:image/png;base64," + base64.b64encode(picture).decode()
        below = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.sections.setdefault(section or title, []).append(
            f'<figure><img src="{uri}" alt="{html.escape(title)}">{below}</figure>')

    def text(self, text: str, section: str) -> None:
        self.sections.setdefault(section, []).append(f"<p>{html.escape(text)}</p>")

    def table(self, header: tuple[str, ...], rows: list[tuple[str, ...]], section: str) -> None:
        cells = [f"<tr>{''.join(f'<{tag}>{html.escape(c)}</{tag}>' for c in row)}</tr>"
                 for tag, row in [("th", header)] + [("td", row) for row in rows]]
        self.sections.setdefault(section, []).append(f"<table>{''.join(cells)}</table>")

    def note(self, text: str, section: str = "Notes") -> None:
        """What the page cannot show, and why."""
        self.sections.setdefault(section, []).append(f'<p class="note">{html.escape(text)}</p>')

    def html(self, name: str, summary: list[tuple[str, str]]) -> str:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
        body = "".join(_section(title, items) for title, items in self.sections.items())
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: evoarena '
                f'report</title><style>{_CSS}</style></head><body><h1>{html.escape(name)}</h1><table>{rows}</table>'
                f"{body}<footer>evoarena report, written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
                "from the result store.</footer></body></html>")


GRID_FROM = 3  # pictures in a section from which they are laid out in a grid


def _section(title: str, items: list[str]) -> str:
    """A section; its figures in a grid when it has GRID_FROM or more (text and notes stay above and below)."""
    figures = [item for item in items if item.startswith("<figure")]
    if len(figures) < GRID_FROM:
        return f"<section><h2>{html.escape(title)}</h2>{''.join(items)}</section>"
    before = [item for item in items[:items.index(figures[0])] if not item.startswith("<figure")]
    after = [item for item in items[items.index(figures[0]):] if not item.startswith("<figure")]
    return (f"<section><h2>{html.escape(title)}</h2>{''.join(before)}<div class=\"grid\">{''.join(figures)}</div>"
            f"{''.join(after)}</section>")


_CSS = ("body{font-family:sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px 2px 0}"
        "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top;max-width:100%}"
        "figure img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555;max-width:800px}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1em;align-items:start}"
        ".grid figure{margin:0}"
        ".note{color:#7a4b00}footer{margin-top:2em;font-size:.8em;color:#777}")
