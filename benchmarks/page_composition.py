"""What a chapter page is made of, by rendered height: prose, code, printed text, tables, figures.

Opens each chapter of a built book (``_build/html``) in Debian's Chromium (Playwright as the
driver, no browser download) at a desktop width and measures, inside the article:

- **prose**: everything outside code cells, plus Markdown that a cell displays (generated prose);
- **code**: the input of every visible code cell (folded inputs, e.g. ``hide-input``, are not
  counted: a reader sees only their one-line toggle);
- **printed**: plain-text outputs (prints, reprs);
- **listings**: helper sources a cell shows (``show_source``);
- **tables** and **figures**: HTML tables and images in cell outputs.

    python benchmarks/page_composition.py [_build/html] [--width 1280] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import threading
from pathlib import Path

CHROMIUM = os.environ.get("SHORTCUT_BOOK_CHROMIUM", "/usr/bin/chromium")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


MEASURE = """() => {
  const article = document.querySelector("article.bd-article") || document.querySelector("article");
  const h = (els) => els.reduce((s, e) => s + e.getBoundingClientRect().height, 0);
  // folded content (a closed <details>, e.g. a hide-input cell's source) is not on the page
  const q = (sel) =>
    Array.from(article.querySelectorAll(sel)).filter((e) => !e.closest("details:not([open])"));
  const total = article.getBoundingClientRect().height;
  const cells = h(q("div.cell"));
  const code = h(q("div.cell div.cell_input"));
  const markdown = h(q("div.cell_output div.text_markdown"));
  const tables = h(q("div.cell_output table"));
  const figures = h(q("div.cell_output img"));
  const printed = h(q("div.cell_output div.output.stream, div.cell_output div.text_plain"));
  const listings = h(q("div.cell_output div.text_html div.highlight"));
  return {total, cells, code, markdown, tables, figures, printed, listings};
}"""


def measure(html: Path, width: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    handler = functools.partial(Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": width, "height": 900})
            for path in sorted((html / "book").glob("[0-9][0-9]_*.html")):
                page.goto(base + f"book/{path.name}", wait_until="load")
                m = page.evaluate(MEASURE)
                prose = m["total"] - m["cells"] + m["markdown"]
                parts = {
                    "prose": prose,
                    "code": m["code"],
                    "printed": m["printed"],
                    "listings": m["listings"],
                    "tables": m["tables"],
                    "figures": m["figures"],
                }
                rows.append(
                    {
                        "page": path.stem,
                        "height_px": round(m["total"]),
                        **{k: round(v / m["total"], 3) for k, v in parts.items()},
                    }
                )
            browser.close()
    finally:
        server.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    rows = measure(args.html, args.width)
    cols = ["prose", "code", "listings", "printed", "tables", "figures"]
    print(f"{'page':28s} {'height':>8s} " + " ".join(f"{c:>8s}" for c in cols))
    for r in rows:
        print(f"{r['page']:28s} {r['height_px']:8d} " + " ".join(f"{r[c]:8.0%}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({"width": args.width, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
