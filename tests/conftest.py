import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A run small enough for 2 CPU cores: 128 px, 1 image per process, a handful of iterations.
TINY = [
    "--set",
    "input.min_size_train=[128]",
    "--set",
    "input.max_size_train=128",
    "--set",
    "input.min_size_test=128",
    "--set",
    "input.max_size_test=128",
    "--set",
    "benchmark.iters=5",
    "--set",
    "benchmark.warmup=2",
    "--set",
    "benchmark.window_end=5",
    "--set",
    "benchmark.num_workers=0",
]


def need_impls(*names: str) -> None:
    """Skip the calling test, naming what is missing and how to install it, unless every implementation in
    ``names`` is installed here (the adapters' own ``available()``)."""
    from mrcnn_bench.adapters import get_adapter

    missing = [f"{n} ({why})" for n in names for ok, why in [get_adapter(n).available()] if not ok]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}; `make detectron2 mmdet` installs them")


ALL_FOUR = ("reference", "torchvision", "detectron2", "mmdet")


def pytest_collection_modifyitems(config, items):
    import torch

    # a long test is an end-to-end one of a minute or more: it must carry e2e, or make test-fast runs it
    unmarked = [item.nodeid for item in items if "long" in item.keywords and "e2e" not in item.keywords]
    if unmarked:
        raise pytest.UsageError(f"marked long but not e2e: {', '.join(unmarked)} (tests/conftest.py)")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# What makes a test end-to-end (marker ``e2e``): it starts mrcnn-bench (run_cli, or a subprocess of the
# command line or of a benchmark script) or trains (an optimizer's step). A test without the marker that
# does either fails, saying so: the fast run (``-m "not e2e"``, make test-fast) stays what it says.
_E2E = {"marked": True}
_STARTS_BENCH = ("mrcnn_bench.harness.cli", "mrcnn-bench", "benchmarks/", "scripts/gate.py")


def _not_e2e(what: str) -> None:
    if not _E2E["marked"]:
        pytest.fail(f"this test {what}: mark it @pytest.mark.e2e (tests/conftest.py)", pytrace=False)


@pytest.fixture(autouse=True)
def _e2e_guard(request, monkeypatch):
    import subprocess as sp

    import torch

    _E2E["marked"] = request.node.get_closest_marker("e2e") is not None
    if _E2E["marked"]:
        yield
        return
    step, popen_init = torch.optim.SGD.step, sp.Popen.__init__

    def guarded_step(self, *args, **kwargs):
        _not_e2e("trains (torch.optim.SGD.step)")
        return step(self, *args, **kwargs)

    def guarded_popen(self, args, *rest, **kwargs):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if any(s in text for s in _STARTS_BENCH):
            _not_e2e(f"starts {text[:80]!r}")
        return popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", guarded_step)
    monkeypatch.setattr(sp.Popen, "__init__", guarded_popen)
    yield
    _E2E["marked"] = True


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from mrcnn_bench.harness.data.datasets import make_synthetic

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


def two_process_run(impl: str, synth_root, tmp_path) -> tuple[dict, list[dict]]:
    """``run --impl IMPL --gpus 2`` on the CPU at TINY's size, 1 image per process: the record (its status
    and world size checked) and its iterations (5, with the global batch of 2, each with a loss)."""
    from mrcnn_bench.harness.records.results import load_run, read_jsonl

    out = run_cli(
        "run",
        "--impl",
        impl,
        "--gpus",
        2,
        "--device",
        "cpu",
        "--data",
        synth_root,
        "--out",
        tmp_path,
        "--run-id",
        "two",
        "--set",
        "solver.ims_per_batch=2",
        *TINY,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = load_run(tmp_path / "two" / impl)
    assert record["status"] == "ok" and record["world_size"] == 2
    rows = read_jsonl(tmp_path / "two" / impl / "iterations.jsonl")
    assert [r["iter"] for r in rows] == list(range(5)) and all(r["global_images"] == 2 for r in rows)
    assert all(r["loss"] > 0 and r["data_time"] >= 0 for r in rows)
    return record, rows
