import pytest

from helpers.data.mnist import load_mnist


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
