"""The HTML document of `evoarena report`: sections of figures (PNG data URIs), tables and notes,
in the order they were added, under a summary table; nothing but the page itself is fetched."""

from __future__ import annotations

import base64
import html
import time

from .report_plots import png


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
        body = "".join(f"<section><h2>{html.escape(title)}</h2>{''.join(items)}</section>"
                       for title, items in self.sections.items())
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: evoarena '
                f'report</title><style>{_CSS}</style></head><body><h1>{html.escape(name)}</h1><table>{rows}</table>'
                f"{body}<footer>evoarena report, written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
                "from the result store.</footer></body></html>")


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px 2px 0}"
        "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
        "figure img{max-width:100%}figcaption{font-size:.85em;color:#555;max-width:800px}"
        ".note{color:#7a4b00}footer{margin-top:2em;font-size:.8em;color:#777}")
