"""The one way the book derives seeds (helpers.seed)."""

import itertools
import json
import re

import pytest
import torch

from helpers.cache import REPO_ROOT
from helpers.seed import derive_seed, generator, seed_everything


def test_derived_seeds_are_stable_and_distinct_per_purpose_and_run_seed():
    purposes = [("train", "subset"), ("test", "subset"), ("colours",), ("batch order",)]
    seeds = {(s, p): derive_seed(s, *p) for s in range(4) for p in purposes}
    assert len(set(seeds.values())) == len(seeds)  # no stream shared, also across run seeds
    assert derive_seed(1, "train", "subset") == seeds[(1, ("train", "subset"))]
    assert all(0 <= v < 2**63 for v in seeds.values())
    # seed + offset would collide: run seed 1's stream 0 is run seed 0's stream 1
    assert derive_seed(1, "train") != derive_seed(0, "test")


def test_generator_with_a_purpose_draws_the_derived_stream():
    a = torch.rand(5, generator=generator(3, "split"))
    b = torch.rand(5, generator=torch.Generator().manual_seed(derive_seed(3, "split")))
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(5, generator=generator(3)), torch.rand(5, generator=generator(3)))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_bad_seed_is_refused(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        derive_seed(bad, "x")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(bad)


def test_a_purpose_is_required():
    with pytest.raises(ValueError, match="purpose"):
        derive_seed(0)


def _sources():
    for path in itertools.chain(
        (REPO_ROOT / "helpers").rglob("*.py"), (REPO_ROOT / "notebooks").glob("*.ipynb")
    ):
        text = path.read_text()
        if path.suffix == ".ipynb":  # code cells: the prose may name a seed offset it explains
            cells = json.loads(text)["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield path, text


def test_no_seed_is_derived_by_arithmetic():
    """Offsets (``seed + 1``, ``seed * 1000 + k``) make the streams of neighbouring run seeds
    overlap; every module and chapter goes through derive_seed instead."""
    arithmetic = re.compile(r"\bseed\)?\s*[+*]\s*\d|\bseed\s*\+\s*SEED_OFFSETS")
    found = [
        f"{path.relative_to(REPO_ROOT)}: {line.strip()}"
        for path, text in _sources()
        for line in text.splitlines()
        # code only: comments and ``literal`` mentions in docstrings may name the old way
        if arithmetic.search(line.split("#")[0]) and "``" not in line
    ]
    assert found == []


def test_a_seed_beyond_64_bits_is_refused_by_name():
    """Issue 29, item 4: 2**64 used to fail in torch with "Overflow when unpacking long long"."""
    with pytest.raises(ValueError, match=r"seed must be <= 2\*\*64 - 1"):
        seed_everything(2**64)
    with pytest.raises(ValueError, match=r"seed must be <= 2\*\*64 - 1"):
        derive_seed(2**64, "x")
    seed_everything(2**64 - 1)  # the largest seed torch takes still works
    seed_everything(0)
