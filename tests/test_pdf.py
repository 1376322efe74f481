"""``make pdf``: the whole book as one PDF, printed by Chromium from the built HTML. Every page of
the table of contents is in it in order, with its title, its figures and a bookmark; the contents
page links to the chapters; the built book's header can link to the PDF."""

import os
import re
from pathlib import Path

import pytest

from helpers.book import pdf as book_pdf
from helpers.book.downloads import AVAILABLE_JS, PDF_NAME

CHROMIUM = Path(os.environ.get("SHORTCUT_BOOK_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.slow


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def printed(built_book, tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package")
    out = tmp_path_factory.mktemp("pdf") / "book.pdf"
    book_pdf.build_pdf(built_book, out, chromium=CHROMIUM)
    from pypdf import PdfReader

    return built_book, PdfReader(out)


def _images_on(page) -> int:
    xobjects = (page.get("/Resources") or {}).get("/XObject") or {}
    return sum(1 for x in xobjects.values() if x.get_object().get("/Subtype") == "/Image")


def test_every_page_of_the_toc_is_in_the_pdf_in_order(printed):
    html, reader = printed
    pages = book_pdf.toc_pages(html)
    top = [item for item in reader.outline if not isinstance(item, list)]
    assert len(top) == len(pages), [t.title for t in top]
    starts = [reader.get_destination_page_number(item) for item in top]
    assert starts == sorted(starts), "bookmarks out of reading order"
    ends = [*starts[1:], len(reader.pages)]
    for page, item, start, end in zip(pages, top, starts, ends):
        first = _words(reader.pages[start].extract_text())
        heading = item.title.removeprefix("Full-profile run: ")
        assert _words(heading)[:40] in first, f"{page}: title {heading!r} not on page {start + 1}"
        if Path(page).name[:2].isdigit():
            figures = sum(_images_on(reader.pages[i]) for i in range(start, end))
            assert figures >= 1, f"{page}: no figure on pages {start + 1}-{end}"


def test_the_contents_page_links_into_the_book(printed):
    _, reader = printed
    contents = reader.pages[1]
    assert "Contents" in contents.extract_text()
    links = [a.get_object() for a in contents.get("/Annots") or []]
    internal = [a for a in links if a.get("/Subtype") == "/Link" and "/Dest" in a]
    assert len(internal) >= 10, f"{len(internal)} internal links on the contents page"


def test_the_built_book_links_the_pdf(printed):
    html, _ = printed
    assert (html / PDF_NAME).is_file()
    assert PDF_NAME in (html / "_static" / AVAILABLE_JS).read_text()
