"""The whole book as one PDF, printed by Debian's Chromium from the built HTML (nothing is
downloaded): ``make pdf``, or

    python -m helpers.book.pdf [--html _build/html] [--out _build/book.pdf] [--no-appendix]

Every page of the table of contents (the full-profile appendix too, unless ``--no-appendix``) is
taken from the built HTML, its article joined into one print document behind a title page and a
table of contents whose entries link to the chapters and their sections; ids and links are
prefixed per page, so a link between chapters lands on the right page of the PDF. Chromium
typesets the equations with the book's own MathJax and prints A4 pages with page numbers; pypdf
adds the outline (bookmarks: every page and its sections). The PDF is also copied into the built
book (``_build/html/book.pdf``), where the page header links to it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html as html_lib
import http.server
import logging
import os
import posixpath
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from bs4 import BeautifulSoup

from helpers.book.downloads import PDF_NAME, write_available
from helpers.book.layout import APPENDIX_PROFILE, profile_folder
from helpers.cache import REPO_ROOT

CHROMIUM = Path(os.environ.get("SHORTCUT_BOOK_CHROMIUM", "/usr/bin/chromium"))
PRINT_PAGE = "_book_print.html"  # written into the built book while Chromium prints it
# What the web page has and paper does not: header anchors, the hidden source of hide-input cells
# (the outputs stay), copy buttons.
DROP = ["a.headerlink", "details.hide.above-input", "button.copybtn", ".toggle-button"]
PRINT_CSS = """
html, body { background: #fff; }
body { margin: 0; font-size: 10.5pt; }
.print-book { max-width: none; padding: 0; }
.print-page { break-before: page; }
.print-title { text-align: center; padding-top: 30vh; }
.print-title h1 { font-size: 24pt; border: none; }
.print-toc { break-before: page; }
.print-toc ol { list-style: none; padding-left: 0; }
.print-toc ol ol { padding-left: 1.5em; font-size: 0.92em; }
.print-toc li { margin: 0.15em 0; }
.print-toc a { text-decoration: none; }
article.bd-article img { max-width: 100% !important; height: auto !important; }
figure, div.cell_output img, .print-page img { break-inside: avoid; }
h1, h2, h3, h4 { break-after: avoid; }
div.cell_output table, article table, article table.table {
  display: table !important; overflow: visible !important; max-width: 100%;
  font-size: 8pt; break-inside: auto;
}
tr { break-inside: avoid; }
div.highlight pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 8pt; }
div.highlight, div.cell_output { overflow: visible !important; max-height: none !important; }
details > summary { display: none; }
a.book-download { display: none; }
"""
FOOTER = (
    '<div style="font-size:8px;width:100%;text-align:center;color:#555;">'
    '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'
)


def toc_pages(html_dir: Path, appendix: bool = True, root: Path = REPO_ROOT) -> list[str]:
    """The built pages of the book in reading order (``book/intro.html``, …), the full-profile
    appendix last."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"], *(e["file"] for e in toc["chapters"])]
    pages = [f"{f}.html" for f in files]
    if appendix:
        full = profile_folder(html_dir / "book", APPENDIX_PROFILE)
        pages += [p.relative_to(html_dir).as_posix() for p in sorted(full.glob("[0-9]*.html"))]
    missing = [p for p in pages if not (html_dir / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"not in the built book {html_dir}: {missing} (run make html first)"
        )
    return pages


def _resolve(page: str, href: str) -> tuple[str, str]:
    """(page path from the book's root, fragment) of a relative link on ``page``."""
    parts = urlsplit(href)
    path = (
        posixpath.normpath(posixpath.join(posixpath.dirname(page), parts.path))
        if parts.path
        else page
    )
    return path, parts.fragment


def _page_article(html_dir: Path, page: str, index: dict[str, str]) -> tuple[str, str, list]:
    """The article of ``page`` rewritten for the print document: (title, html, [(id, h2 title)])."""
    soup = BeautifulSoup((html_dir / page).read_text(encoding="utf-8"), "html.parser")
    article = soup.select_one("article.bd-article")
    if article is None:
        raise ValueError(f"{page}: no article element")
    for selector in DROP:
        for el in article.select(selector):
            el.decompose()
    for details in article.find_all("details"):
        details["open"] = ""
    prefix = index[page]
    for el in article.find_all(id=True):
        el["id"] = f"{prefix}-{el['id']}"
    for a in article.find_all("a", href=True):
        href = a["href"]
        if urlsplit(href).scheme or href.startswith("mailto:"):
            continue
        target, fragment = _resolve(page, href) if not href.startswith("#") else (page, href[1:])
        if target in index:
            a["href"] = f"#{index[target]}-{fragment}" if fragment else f"#{index[target]}"
        else:  # a page that is not in the PDF (index, search, a download): plain text
            a.unwrap()
    for img in article.find_all("img", src=True):
        if not urlsplit(img["src"]).scheme:
            img["src"] = _resolve(page, img["src"])[0]
    h1 = article.find("h1")
    title = h1.get_text(" ", strip=True) if h1 else page
    sections = [
        (h2.parent["id"], h2.get_text(" ", strip=True))
        for h2 in article.find_all("h2")
        if h2.parent is not None and h2.parent.get("id")
    ]
    return title, str(article), sections


def _head(html_dir: Path, page: str) -> str:
    """The stylesheets and MathJax of a built page, with paths from the book's root."""
    soup = BeautifulSoup((html_dir / page).read_text(encoding="utf-8"), "html.parser")
    parts = []
    for link in soup.head.find_all("link", rel="stylesheet"):
        link["href"] = _resolve(page, link["href"])[0]
        parts.append(str(link))
    for script in soup.head.find_all("script"):
        src = script.get("src")
        if src and "mathjax" in src:
            script["src"] = _resolve(page, src)[0]
            parts.append(str(script))
        elif not src and "MathJax" in script.get_text():
            parts.append(str(script))
    return "\n".join(parts)


def print_document(html_dir: Path, pages: list[str], title: str) -> tuple[str, list]:
    """One HTML document of ``pages`` (title page, contents, then every page's article) and its
    outline: [(anchor, title, [(anchor, section title)])]."""
    index = {page: f"p{i:02d}" for i, page in enumerate(pages)}
    bodies, toc, outline = [], [], []
    for page in pages:
        page_title, article, sections = _page_article(html_dir, page, index)
        if page.startswith(f"book/{APPENDIX_PROFILE}/"):
            page_title = f"Full-profile run: {page_title}"
        outline.append((index[page], page_title, sections))
        bodies.append(f'<section class="print-page" id="{index[page]}">{article}</section>')
        subs = "".join(
            f'<li><a href="#{sid}">{html_lib.escape(text)}</a></li>' for sid, text in sections
        )
        toc.append(
            f'<li><a href="#{index[page]}">{html_lib.escape(page_title)}</a>'
            + (f"<ol>{subs}</ol>" if subs else "")
            + "</li>"
        )
    document = f"""<!DOCTYPE html>
<html lang="en" data-theme="light" data-mode="light">
<head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>
{_head(html_dir, pages[-1])}
<style>{PRINT_CSS}</style></head>
<body><div class="bd-article-container print-book">
<div class="print-title"><h1>{html_lib.escape(title)}</h1></div>
<nav class="print-toc"><h2>Contents</h2><ol>{"".join(toc)}</ol></nav>
{"".join(bodies)}
</div></body></html>
"""
    return document, outline


def add_outline(pdf: Path, outline: list, title: str = "") -> int:
    """Bookmarks for every page and section of ``outline`` at the page its anchor (a named
    destination Chromium writes for each link target) lands on; returns how many."""
    from pypdf import PdfReader, PdfWriter

    # Chromium's trailer under-counts the objects; pypdf repairs that and logs a warning per build
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)
    try:
        reader = PdfReader(pdf)
        dests = {name.lstrip("/"): d for name, d in reader.named_destinations.items()}
        writer = PdfWriter(clone_from=reader)
    finally:
        pypdf_log.setLevel(level)
    added = 0
    for anchor, heading, sections in outline:
        if anchor not in dests:
            raise ValueError(f"{pdf}: no destination for {heading!r} ({anchor})")
        page = reader.get_destination_page_number(dests[anchor])
        parent = writer.add_outline_item(title=heading, page_number=page)
        added += 1
        for sid, text in sections:
            if sid in dests:
                page = reader.get_destination_page_number(dests[sid])
                writer.add_outline_item(title=text, page_number=page, parent=parent)
                added += 1
    writer.page_mode = "/UseOutlines"
    if title:
        writer.add_metadata({"/Title": title})
    with pdf.open("wb") as fh:
        writer.write(fh)
    return added


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_pdf(
    html_dir: Path, out: Path, *, appendix: bool = True, chromium: Path = CHROMIUM
) -> Path:
    """Print the built book ``html_dir`` to ``out`` with Chromium; copy it into the built book."""
    if not chromium.is_file():
        raise FileNotFoundError(f"no Chromium at {chromium} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    title = config.get("title", "The book")
    pages = toc_pages(html_dir, appendix)
    document = html_dir / PRINT_PAGE
    text, outline = print_document(html_dir, pages, title)
    document.write_text(text, encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.pdf")
    try:
        with _serve(html_dir) as site, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), headless=True)
            try:
                page = browser.new_page()
                # nothing leaves the local server (the book must print offline)
                page.route(
                    "**/*",
                    lambda r: r.continue_() if r.request.url.startswith(site) else r.abort(),
                )
                page.goto(site + PRINT_PAGE, wait_until="load", timeout=120_000)
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=60_000,
                )
                page.evaluate("() => MathJax.startup.promise")
                page.emulate_media(media="print")
                page.pdf(
                    path=str(partial),
                    format="A4",
                    print_background=True,
                    display_header_footer=True,
                    header_template="<span></span>",
                    footer_template=FOOTER,
                    margin={"top": "14mm", "bottom": "16mm", "left": "14mm", "right": "14mm"},
                )
            finally:
                browser.close()
    finally:
        document.unlink(missing_ok=True)
    add_outline(partial, outline, title)
    partial.replace(out)
    shutil.copy2(out, html_dir / PDF_NAME)
    write_available(html_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.book.pdf", description=__doc__)
    parser.add_argument("--html", type=Path, default=REPO_ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=None, help="default: <html>/../book.pdf")
    parser.add_argument("--no-appendix", action="store_true", help="leave the full runs out")
    args = parser.parse_args(argv)
    out = args.out or args.html.parent / PDF_NAME
    t0 = time.perf_counter()
    try:
        build_pdf(args.html, out, appendix=not args.no_appendix)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 2**20
    print(f"PDF in {out} ({size:.1f} MiB, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
