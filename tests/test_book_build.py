"""The book renders from the executed chapters, and chapter 01's page carries its figures."""

import re

import pytest

from helpers.book import runner


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("jb")
    return runner.build_html(out)


def test_book_builds_with_chapter_01_figures(html):
    page = (html / "book" / "01_shortcut_learning.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page)
    assert len(images) >= 8, f"expected the chapter's figures, found {len(images)} images"
    for src in images:
        assert (html / "book" / src).resolve().is_file(), src
    assert "Shortcut learning on Biased MNIST" in page
    assert "injected-parameters" not in page and "Parameters" in page


def test_every_chapter_in_the_toc_is_rendered(html):
    toc = (runner.REPO_ROOT / "_toc.yml").read_text()
    for stem in re.findall(r"file: book/(\d\d_\w+)", toc):
        assert (html / "book" / f"{stem}.html").is_file(), stem
