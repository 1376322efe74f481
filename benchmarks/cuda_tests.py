"""Run the ``@pytest.mark.cuda`` tests of tests/test_precision.py, with or without pytest.

The GPU machine has torch but no pytest, so when pytest is missing a minimal stand-in module
provides what those tests use (``mark.cuda``, ``mark.parametrize``, ``fixture``, ``raises``) and
each marked test is called directly.

    python benchmarks/cuda_tests.py [--json out.json] [--dry-run]  # --dry-run: list only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import sys
import time
import traceback
import types
from pathlib import Path

TEST_FILE = Path(__file__).resolve().parents[1] / "tests" / "test_precision.py"


class _Mark:
    def __init__(self, name, args=()):
        self.name, self.args = name, args

    def __call__(self, *args):
        if len(args) == 1 and callable(
            args[0]
        ):  # decorating a test (@mark.name or @mark.name(...))
            fn = args[0]
            fn.marks = getattr(fn, "marks", []) + [self]
            return fn
        return _Mark(self.name, args)


def _stub_pytest() -> types.ModuleType:
    stub = types.ModuleType("pytest")
    stub.mark = type("MarkGenerator", (), {"__getattr__": lambda self, name: _Mark(name)})()
    stub.fixture = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)

    @contextlib.contextmanager
    def raises(exc, match=None):
        try:
            yield
        except exc as err:
            if match is not None and not re.search(match, str(err)):
                raise AssertionError(f"{err!r} does not match {match!r}") from err
        else:
            raise AssertionError(f"did not raise {exc.__name__}")

    stub.raises = raises
    return stub


def collect():
    """The cuda-marked tests as (id, callable) pairs, parametrisations expanded."""
    try:
        import pytest  # noqa: F401

        have_pytest = True
    except ImportError:
        sys.modules["pytest"] = _stub_pytest()
        have_pytest = False
    spec = importlib.util.spec_from_file_location("test_precision", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = []
    for name, fn in vars(module).items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        marks = getattr(fn, "pytestmark", None) or getattr(fn, "marks", [])
        if not any(m.name == "cuda" for m in marks):
            continue
        grids = [m.args for m in marks if m.name == "parametrize"]
        combos = [{}]
        for names, values in grids:
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            combos = [
                dict(c, **dict(zip(names, v if len(names) > 1 else (v,))))
                for c in combos
                for v in values
            ]
        for c in combos:
            tid = f"{name}[{'-'.join(map(str, c.values()))}]" if c else name
            tests.append((tid, lambda fn=fn, c=c: fn(**c)))
    return tests, have_pytest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--dry-run", action="store_true", help="collect and list the tests, run none"
    )
    args = parser.parse_args()
    tests, have_pytest = collect()
    print(
        f"{len(tests)} CUDA tests from {TEST_FILE.name} "
        f"({'pytest present' if have_pytest else 'pytest stand-in'})"
    )
    if not tests:
        raise SystemExit("no CUDA tests collected")
    results = {}
    for tid, run in tests:
        if args.dry_run:
            print(f"  would run {tid}")
            continue
        t0 = time.perf_counter()
        try:
            run()
            results[tid] = {"ok": True}
        except Exception:  # noqa: BLE001 - report every failure, run the rest
            results[tid] = {"ok": False, "error": traceback.format_exc(limit=3)[-2000:]}
        results[tid]["s"] = round(time.perf_counter() - t0, 2)
        print(f"  {'PASS' if results[tid]['ok'] else 'FAIL'} {tid} ({results[tid]['s']} s)")
        if not results[tid]["ok"]:
            print(results[tid]["error"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"tests": results, "collected": [t for t, _ in tests], "dry_run": args.dry_run},
                fh,
                indent=2,
            )
    if any(not r["ok"] for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
