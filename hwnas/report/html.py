"""Self-contained HTML: one page with its style, its sort script and its images inline (data:
URIs), so a report opens anywhere and fetches nothing. page.py builds an image model's report
with these pieces; html_report renders a Markdown report (a language model's) the same way."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
 max-width:1400px;padding:0 1.5em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:12.5px;margin:.5em 0}
td,th{border:1px solid #d0d0d0;padding:3px 7px;text-align:left;vertical-align:middle}
th{background:#f0f3f7;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aaa;font-size:.8em}
table.sortable th[aria-sort=ascending]:after{content:" \\2191";color:#333}
table.sortable th[aria-sort=descending]:after{content:" \\2193";color:#333}
tr:nth-child(even) td{background:#fafafa}
tr.front td{background:#eef8ee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.plot{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px}
code{background:#f3f3f3;padding:0 3px;font-size:.92em}
.swatch{display:inline-block;width:.9em;height:.9em;margin:0 .25em 0 .6em;
 vertical-align:middle;border:1px solid #888}
.key,.note{color:#555;font-size:.9em}
ul.facts{padding-left:1.2em}
"""

# click a header to sort by it (numbers as numbers, "-" last); no library, no network
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      function key(row) {
        var cell = row.cells[column], text = cell ? (cell.dataset.sort || cell.textContent) : "";
        var number = parseFloat(text.replace(/[%,]/g, ""));
        return isNaN(number) ? text.trim() : number;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def page(title: str, body: str) -> str:
    """A whole page: style and script inline, nothing fetched."""
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><link rel='icon' href='data:,'>"
            f"<style>{STYLE}</style></head><body>\n{body}\n"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")


def data_uri(path: Path) -> str:
    """A PNG as a data: URI, so the page carries its plots."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image(path: Path, alt: str) -> str:
    return f'<img class="plot" src="{data_uri(path)}" alt="{html.escape(alt)}">'


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
        return True
    except ValueError:
        return False


def table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
          raw_columns: frozenset[int] = frozenset()) -> str:
    """A sortable table; cells are escaped except in ``raw_columns`` (already HTML)."""
    head = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in headers)
    lines = []
    for index, row in enumerate(rows):
        cls = f" class='{row_classes[index]}'" if row_classes and row_classes[index] else ""
        cells = "".join(
            f"<td>{c}</td>" if i in raw_columns else
            f"<td class='num'>{html.escape(c)}</td>" if _is_number(c) else
            f"<td>{html.escape(c)}</td>" for i, c in enumerate(row))
        lines.append(f"<tr{cls}>{cells}</tr>")
    return (f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>\n"
            + "\n".join(lines) + "\n</tbody></table>")


def html_report(markdown: str, title: str, folder: Path | None = None) -> str:
    """The Markdown report as one self-contained page: its tables sortable, its images (found
    in ``folder``) inline."""
    body: list[str] = []
    rows: list[list[str]] = []
    in_code = False

    def close_table() -> None:
        if rows:
            body.append(table(rows[0], rows[1:]))
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):  # a fixed-width table (the time per module)
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= {"-"}:
                rows.append(cells)
            continue
        close_table()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            source = Path(line[line.index("(") + 1:-1])
            where = (folder or Path(".")) / source
            if where.is_file():
                body.append(image(where, "Pareto front"))
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    close_table()
    return page(title, "\n".join(body))
