"""benchmarks/gpu_check.sh --dry-run: the prepared GPU check must stay runnable (imports, files,
arguments)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_succeeds():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "plan" in out and "budget 480 s" in out
    assert "no grad-cam / ART / Jupyter needed" in out
    assert "CUDA tests from test_precision.py" in out and "would run test_cuda_" in out
    assert "ReBias step" in out and "rebias: 1/1 epochs" in out
    assert "all stages passed" in out
