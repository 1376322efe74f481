import pytest

from helpers.data.mnist import load_mnist


@pytest.fixture(scope="session")
def mnist():
    """The real, checksum-verified MNIST (fetched once into the cache)."""
    return load_mnist()
