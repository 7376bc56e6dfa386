import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A run small enough for 2 CPU cores: 128 px, 1 image per process, a handful of iterations.
TINY = [
    "--set", "input.min_size_train=[128]",
    "--set", "input.max_size_train=128",
    "--set", "input.min_size_test=128",
    "--set", "input.max_size_test=128",
    "--set", "benchmark.iters=5",
    "--set", "benchmark.warmup=2",
    "--set", "benchmark.window_end=5",
    "--set", "benchmark.num_workers=0",
]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from mrcnn_bench.harness.data import make_synthetic

    root = tmp_path_factory.mktemp("data") / "synth"
    make_synthetic(root, images=8, size=128, seed=0)
    return root


def run_cli(*args, cwd=None, timeout=900, env=None):
    """The mrcnn-bench command line in a subprocess, as a user runs it."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "mrcnn_bench.harness.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=full_env,
    )
