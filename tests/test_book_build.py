"""The book renders from the executed chapters, and chapter 01's page carries its figures."""

import re

import pytest

from helpers.book import runner


@pytest.fixture
def html(built_book):
    return built_book


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


def test_no_repository_buttons_without_a_repository(html):
    """The placeholder repository is gone: with none configured, no button points anywhere."""
    page = (html / "book" / "05_rebias.html").read_text()
    assert "your-org" not in page
    assert "mybinder.org" not in page and "colab.research.google.com" not in page


def test_one_setting_turns_the_repository_buttons_on(monkeypatch):
    monkeypatch.setenv(runner.REPOSITORY_ENV, "https://github.com/example/book")
    config = runner.book_config()
    assert config["repository"]["url"] == "https://github.com/example/book"
    assert config["html"]["use_repository_button"] and config["html"]["use_issues_button"]
    assert config["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    monkeypatch.delenv(runner.REPOSITORY_ENV)
    config = runner.book_config()
    assert not config["html"]["use_repository_button"] and "launch_buttons" not in config
    with pytest.raises(ValueError, match="https://"):
        runner.book_config("github.com/example/book")


def test_a_bad_repository_stops_a_run_before_any_chapter(monkeypatch, capsys):
    monkeypatch.setenv(runner.REPOSITORY_ENV, "github.com/example/book")
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("a chapter was executed"))
    assert runner.main(["run", "--chapters", "01"]) == 2
    assert "must be an https:// address" in capsys.readouterr().err
