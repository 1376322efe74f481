"""The built HTML book in a real browser: Debian's Chromium driven by Playwright, with every
request that leaves the local server blocked (so the book must work offline), at a desktop and a
phone width.

`make test` installs Chromium from Debian's packages when it is missing; Playwright is only the
driver (no browser download). ``SHORTCUT_BOOK_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import yaml

from helpers.cache import REPO_ROOT

CHROMIUM = Path(os.environ.get("SHORTCUT_BOOK_CHROMIUM", "/usr/bin/chromium"))
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 412, "height": 915}
# the pages in reading order, from the table of contents
TOC = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
CHAPTERS = [Path(e["file"]).name for e in [{"file": TOC["root"]}, *TOC["chapters"]]]


# an element's text without what MathJax typeset (its output keeps the TeX in assistive markup)
RENDERED_TEXT = """els => els.map(e => {
  const c = e.cloneNode(true);
  c.querySelectorAll("mjx-container").forEach(m => m.remove());
  return c.innerText;
})"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test log free of one line per request
        pass


@pytest.fixture(scope="module")
def site(built_book):
    """An HTTP server on 127.0.0.1 over the built book; yields its base address."""
    handler = functools.partial(Quiet, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


class Reader:
    """A browser page that blocks every request off the local server and records console errors
    and blocked requests."""

    def __init__(self, browser, site: str, viewport: dict):
        self.site, self.errors, self.blocked = site, [], []
        self.context = browser.new_context(viewport=viewport)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.errors.append(f"{self.page.url}: {m.text}"),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"{self.page.url}: {e}"))

    def _route(self, route):
        if route.request.url.startswith(self.site):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def open(self, path: str):
        response = self.page.goto(urljoin(self.site, path), wait_until="load")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def desktop(browser, site):
    r = Reader(browser, site, DESKTOP)
    yield r
    r.close()


@pytest.fixture
def phone(browser, site):
    r = Reader(browser, site, PHONE)
    yield r
    r.close()


def page_path(stem: str) -> str:
    return f"book/{stem}.html"


def test_sidebar_opens_and_closes_on_a_phone(phone):
    page = phone.open(page_path("05_rebias"))
    sidebar_link = page.locator(
        "#pst-primary-sidebar-modal a[href$='01_shortcut_learning.html']:not([href*='full/'])"
    )  # the quick chapter, not its full-profile copy in the appendix
    assert not page.locator("#pst-primary-sidebar").is_visible()
    page.locator(".primary-toggle").first.click()
    dialog = page.locator("#pst-primary-sidebar-modal")
    assert dialog.evaluate("d => d.open"), "the toggle did not open the chapter list"
    assert sidebar_link.is_visible(), "the opened sidebar does not list the chapters"
    page.keyboard.press("Escape")
    assert not dialog.evaluate("d => d.open"), "Escape did not close the chapter list"
    assert not phone.errors, phone.errors


def test_sidebar_collapses_and_returns_on_a_desktop(desktop):
    page = desktop.open(page_path("05_rebias"))
    sidebar = page.locator("#pst-primary-sidebar")
    assert sidebar.is_visible()
    assert sidebar.locator("a[href$='01_shortcut_learning.html']:not([href*='full/'])").is_visible()
    toggle = page.locator(".primary-toggle").first
    toggle.click()
    page.wait_for_timeout(400)  # the collapse is a CSS transition
    assert not sidebar.is_visible() or sidebar.bounding_box()["width"] < 5, "did not collapse"
    toggle.click()
    page.wait_for_timeout(400)
    assert sidebar.is_visible() and sidebar.bounding_box()["width"] > 100, "did not come back"
    assert not desktop.errors, desktop.errors


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_math_renders_offline(viewport, request):
    reader = request.getfixturevalue(viewport)
    page = reader.open(page_path("05_rebias"))
    page.wait_for_selector("mjx-container", timeout=20_000)
    assert page.locator("mjx-container").count() >= 3
    # MathJax replaces each \( ... \) / \[ ... \] that myst writes; leftovers are unrendered TeX
    raw = re.findall(r"\\[(\[].{0,40}", page.locator("article").inner_text())
    assert not raw, f"unrendered TeX on the page: {raw[:3]}"
    assert not reader.blocked, f"the page asked the network for {reader.blocked}"
    assert not reader.errors, reader.errors


def test_every_page_its_links_and_images(desktop, site):
    """Each chapter page: loads with no console error and no off-site request, its previous/next
    links and every internal link resolve, and every image is decoded."""
    seen: set[str] = set()
    for i, stem in enumerate(CHAPTERS):
        page = desktop.open(page_path(stem))
        prev_next = {
            sel: page.locator(sel).get_attribute("href")
            for sel in ("a.left-prev", "a.right-next")
            if page.locator(sel).count()
        }
        if i > 0:
            assert "a.left-prev" in prev_next, f"{stem}: no link to the previous page"
        if i < len(CHAPTERS) - 1:
            assert "a.right-next" in prev_next, f"{stem}: no link to the next page"
            assert prev_next["a.right-next"].endswith(f"{CHAPTERS[i + 1]}.html")
        page.wait_for_load_state("networkidle")
        # prose only (shown code may hold backslashes): TeX that MathJax did not typeset
        prose = "\n".join(page.eval_on_selector_all("article p, article li", RENDERED_TEXT))
        raw_tex = re.findall(r"\\[(\[].{0,30}|\$[^$\n]{0,40}\\[A-Za-z]+[^$\n]{0,40}\$", prose)
        assert not raw_tex, f"{stem}: unrendered TeX {raw_tex[:3]}"
        images = page.eval_on_selector_all(
            "article img", "els => els.map(e => [e.src, e.complete && e.naturalWidth > 0])"
        )
        broken = [src for src, ok in images if not ok]
        assert not broken, f"{stem}: {len(images)} images, broken: {broken}"
        assert images or not stem[:2].isdigit(), f"{stem}: no figures"
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in hrefs:
            url = href.split("#")[0]
            if url.startswith(site) and url not in seen:
                seen.add(url)
                response = desktop.context.request.get(url)
                assert response.ok, f"{stem}: link {url} gives HTTP {response.status}"
    assert len(seen) >= len(CHAPTERS)
    assert not desktop.blocked, f"pages asked the network for {sorted(set(desktop.blocked))}"
    assert not desktop.errors, desktop.errors


# displayed vs natural width/height of every figure in the article
IMAGE_SHAPES = """els => els.map(e => {
  const r = e.getBoundingClientRect();
  return [e.getAttribute("src"), e.naturalWidth, e.naturalHeight, r.width, r.height];
})"""
MAX_DISTORTION = 0.01


def test_figures_keep_their_aspect_ratio(desktop, built_book):
    """Every image on every chapter page (the full-profile copies too) is shown with the aspect
    ratio of its file, within 1 %: a width capped at the column with a fixed height squashes it."""
    distorted, measured = [], 0
    for html in sorted((built_book / "book").rglob("*.html")):
        path = html.relative_to(built_book).as_posix()
        page = desktop.open(path)
        for src, nw, nh, w, h in page.eval_on_selector_all("article img", IMAGE_SHAPES):
            assert nw and nh and w and h, f"{path}: image {src} not shown ({w}x{h} of {nw}x{nh})"
            measured += 1
            deviation = (w / h) / (nw / nh) - 1
            if abs(deviation) > MAX_DISTORTION:
                distorted.append(f"{path}: {src} shown {w:.0f}x{h:.0f}, file {nw}x{nh}")
    assert measured, "no images measured"
    assert not distorted, f"{len(distorted)} of {measured} images distorted: {distorted[:5]}"


def test_search_finds_chapter_05(desktop):
    page = desktop.open("search.html?q=ReBias")
    page.wait_for_selector("#search-results ul.search li", timeout=20_000)
    results = page.eval_on_selector_all(
        "#search-results ul.search li a", "els => els.map(e => e.href)"
    )
    assert any(urlsplit(r).path.endswith("05_rebias.html") for r in results), results
    assert not desktop.errors, desktop.errors


def chapter_pages(built_book: Path) -> list[str]:
    """Every page of the book's text (the introduction, the chapters, their full-profile copies),
    as paths below the site root."""
    return [
        p.relative_to(built_book).as_posix() for p in sorted((built_book / "book").rglob("*.html"))
    ]


# the text column's width and, per table, its scroll width, its widest row (the width of the cells
# alone: a caption makes a table as wide as the column), its caption and its header cells
TABLE_WIDTHS = """() => {
  const a = document.querySelector("article.bd-article");
  const s = getComputedStyle(a);
  const column = a.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
  return [column, [...a.querySelectorAll("table")].map(t => [
    t.scrollWidth,
    Math.max(0, ...[...t.rows].map(r => Math.round(r.getBoundingClientRect().width))),
    t.caption ? t.caption.innerText.trim().slice(0, 70) : "",
    [...t.querySelectorAll("th")].map(h => h.innerText.trim()),
  ])];
}"""
# a metric key where a header should have words (helpers.book.tables.HEADERS)
METRIC_KEY = re.compile(r"^\w+_(?:acc|loss|s)$")


def test_every_table_fits_the_text_column(desktop, built_book):
    """At 1280 px no table is wider than the text column (no sideways scrolling, nothing cut),
    and no header is a metric key (``unbiased_acc``) instead of words. Prints the widest table of
    each page (``pytest -s``)."""
    from helpers.book.tables import HEADERS

    too_wide, keys, measured = [], [], 0
    for path in current_pages(desktop, built_book):
        page = desktop.open(path)
        column, tables = page.evaluate(TABLE_WIDTHS)
        for width, _, caption, headers in tables:
            measured += 1
            if width > column + 1:
                too_wide.append(f"{path}: {width}px > {column:.0f}px '{caption}'")
            keys += [
                f"{path}: '{h}' in '{caption}'"
                for h in headers
                if (h in HEADERS and HEADERS[h] != h) or METRIC_KEY.match(h)
            ]
        if tables:
            _, cells, caption, _ = max(tables, key=lambda t: t[1])
            print(
                f"{path}: widest table {cells}px of cells in a {column:.0f}px column ('{caption}')"
            )
    assert measured, "no tables measured"
    assert not too_wide, f"{len(too_wide)} of {measured} tables wider than the column: {too_wide}"
    assert not keys, f"headers that are metric keys, not words: {keys}"


# the page's text as a reader sees it: no code cell sources, scripts, or typeset math
READER_TEXT = """() => {
  const c = document.querySelector("article.bd-article").cloneNode(true);
  const hidden = "div.cell_input, mjx-container, script, style, .headerlink";
  c.querySelectorAll(hidden).forEach(e => e.remove());
  return c.innerText;
}"""
RESIDUE = {
    "an unresolved role": re.compile(r"\{(?:cite|cite:p|cite:t|ref|numref|eq|doc|math)\}`?[^`\s]*"),
    "unrendered TeX": re.compile(
        r"\\(?:frac|top|cdot|sum|mathrm|mathbf|text|lambda|alpha|sigma|rho|epsilon|varepsilon"
        r"|left|right|begin|end|sqrt|log|exp|hat|tilde|bar|partial|nabla|mid|in|le|ge|neq|approx"
        r"|times|infty)\b.{0,30}"
        r"|\\[(\[].{0,30}|\$[^$\n]{0,60}[\\^_][^$\n]{0,60}\$"
    ),
    "a machine path": re.compile(r"(?<![\w.])/(?:work|tmp|root|home/\w+)/\S*"),
    "a checkpoint-loading line": re.compile(r"(?i)loaded (?:from )?checkpoint.{0,40}"),
}


def current_pages(desktop, built_book: Path) -> list[str]:
    """The chapter pages whose executed copy is current. A stale copy (the chapter's code changed
    since it ran) may only be a full-profile run, and its page must say that it is stale: it keeps
    what its older code printed until it is executed again."""
    from helpers.book.profile_links import STALE_CLASS

    pages = []
    for path in chapter_pages(built_book):
        page = desktop.open(path)
        if page.locator(f".{STALE_CLASS}").count():
            assert "/full/" in path, f"{path}: a quick-profile chapter is stale; execute it again"
            continue
        pages.append(path)
    return pages


def test_no_page_shows_markup_residue_or_machine_paths(desktop, built_book):
    """No page shows a literal {cite} role, TeX that MathJax did not typeset, a path of the machine
    that executed it, or a line per checkpoint loaded (code cells' sources are not checked)."""
    found = []
    for path in current_pages(desktop, built_book):
        page = desktop.open(path)
        page.wait_for_load_state("networkidle")
        text = page.evaluate(READER_TEXT)
        for what, pattern in RESIDUE.items():
            hits = pattern.findall(text)
            if hits:
                found.append(f"{path}: {len(hits)} × {what}, e.g. {hits[0]!r}")
    assert not found, "\n".join(found)


def test_every_figure_has_alt_text(desktop, built_book):
    """Every image on every page has alt text that says something (not empty, not its file name:
    helpers.plots records it with each inline figure, helpers.book.page_fixes writes it)."""
    missing, measured = [], 0
    for path in current_pages(desktop, built_book):
        page = desktop.open(path)
        for src, alt in page.eval_on_selector_all(
            "article img", "els => els.map(e => [e.getAttribute('src'), e.getAttribute('alt')])"
        ):
            measured += 1
            alt = (alt or "").strip()
            if not alt or alt == src or re.search(r"\.(?:png|jpe?g|svg|gif)$", alt):
                missing.append(f"{path}: {Path(src).name[:16]}…")
    assert measured, "no images measured"
    assert not missing, f"{len(missing)} of {measured} images without alt text: {missing}"
