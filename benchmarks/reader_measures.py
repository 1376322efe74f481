"""What a reader sees on each page of a built book, measured in Debian's Chromium at 1280 px.

Per page (the introduction, the chapters, their full-profile copies): the number of figures and
their worst aspect-ratio distortion (displayed width/height over the file's), the widest table
against the text column, and the residue a reader should never see (a literal ``{cite}`` role,
TeX that MathJax did not typeset, one line per loaded checkpoint). With ``--pdf`` also the page
count of the printed book. The same JavaScript as the browser tests (``tests/test_browser.py``)
does the measuring, so a "before" build of an older commit and today's build are read alike::

    python benchmarks/reader_measures.py _build/html [--pdf _build/book.pdf] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_browser import (  # noqa: E402  (the tests' own probes)
    IMAGE_SHAPES,
    READER_TEXT,
    RESIDUE,
    TABLE_WIDTHS,
    Quiet,
)

CHROMIUM = os.environ.get("SHORTCUT_BOOK_CHROMIUM", "/usr/bin/chromium")


def measure(html: Path, width: int = 1280) -> list[dict]:
    from playwright.sync_api import sync_playwright

    handler = functools.partial(Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = f"http://127.0.0.1:{server.server_address[1]}/"
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": width, "height": 900})
        # offline, as the tests read it: any request off the local server is refused
        context.route(
            "**/*", lambda r: r.continue_() if r.request.url.startswith(site) else r.abort()
        )
        page = context.new_page()
        for file in sorted((html / "book").rglob("*.html")):
            path = file.relative_to(html).as_posix()
            page.goto(site + path, wait_until="load")
            page.wait_for_load_state("networkidle")
            shapes = page.eval_on_selector_all("article img", IMAGE_SHAPES)
            ratios = [(w / h) / (nw / nh) for _, nw, nh, w, h in shapes if nw and nh and w and h]
            worst = max(ratios, key=lambda r: abs(r - 1), default=1.0)
            column, tables = page.evaluate(TABLE_WIDTHS)
            text = page.evaluate(READER_TEXT)
            rows.append(
                {
                    "page": path,
                    "stale": bool(page.locator(".stale-run").count()),
                    "figures": len(shapes),
                    "worst_aspect_ratio": round(worst, 3),
                    "figures_off_by_more_than_1pct": sum(abs(r - 1) > 0.01 for r in ratios),
                    "column_px": round(column),
                    "tables": len(tables),
                    "widest_table_px": max((t[0] for t in tables), default=0),
                    "tables_wider_than_column": sum(t[0] > column + 1 for t in tables),
                    **{what: len(rx.findall(text)) for what, rx in RESIDUE.items()},
                }
            )
        browser.close()
    server.shutdown()
    return rows


def pdf_pages(pdf: Path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(str(pdf)).pages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path, help="a built book's _build/html")
    ap.add_argument("--pdf", type=Path, default=None, help="the printed book (make pdf)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = measure(args.html, args.width)
    out = {"width": args.width, "chromium": CHROMIUM, "rows": rows}
    if args.pdf:
        out["pdf_pages"] = pdf_pages(args.pdf)
    keys = ["figures", "worst_aspect_ratio", "widest_table_px", "column_px"]
    for r in rows:
        residue = {k: r[k] for k in RESIDUE if r[k]}
        flag = " (stale)" if r["stale"] else ""
        print(r["page"] + flag, {k: r[k] for k in keys}, residue or "")
    if "pdf_pages" in out:
        print("PDF pages:", out["pdf_pages"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
