import pytest

from helpers.data.mnist import load_mnist


@pytest.fixture
def pure_background_digits():
    """A maker of ``n`` random-stroke "digits" on pure-colour backgrounds in [-1, 1], with stroke
    masks: the images the pairing chapter trains on and attacks."""
    import torch

    from helpers.data import background_mnist as B

    def make(n: int = 64):
        strokes = torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8
        y = torch.arange(n) % 10
        return B.colour_split(
            strokes.to(torch.uint8) * 255,
            y,
            "pure",
            torch.Generator().manual_seed(1),
            biased_digits=B.BIASED_DIGITS,
        )

    return make


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, worker_id):
    """The HTML book rendered once per test run from the executed chapters in book/ (or an already
    built one: ``SHORTCUT_BOOK_HTML=path/to/_build/html``). Under pytest-xdist the first worker
    that needs it builds it into the run's shared temporary folder, the others wait and reuse it."""
    import os
    from pathlib import Path

    from filelock import FileLock

    from helpers.book import runner

    if os.environ.get("SHORTCUT_BOOK_HTML"):
        return Path(os.environ["SHORTCUT_BOOK_HTML"])
    if worker_id == "master":  # no xdist
        return runner.build_html(tmp_path_factory.mktemp("jb"))
    shared = tmp_path_factory.getbasetemp().parent / "jb"
    done = shared / "built.txt"
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            html = runner.build_html(shared)
            done.write_text(str(html))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def mnist():
    """The real, checksum-verified MNIST (fetched once into the cache)."""
    return load_mnist()


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.cuda`` tests where there is no CUDA GPU (benchmarks/gpu_check.sh runs
    them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
