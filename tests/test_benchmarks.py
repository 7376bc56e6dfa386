"""The benchmark scripts run and print their tables (values are timings: only their form is checked)."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

SMALL = [
    "--set",
    "input.min_size_train=[128]",
    "--set",
    "input.max_size_train=128",
    "--set",
    "data.synth_images=8",
    "--set",
    "data.synth_size=128",
]


@pytest.mark.e2e
def test_levers_benchmark_measures_each_variant_against_the_baseline():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "levers.py"),
            "--rounds",
            "2",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--threads",
            "2",
            "--only",
            "pooler,layout",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {"variant", "baseline", "pooler", "layout"}, out.stdout
    for name in ("pooler", "layout"):
        median, low, high = map(float, re.search(r"([\d.]+) \[([\d.]+), ([\d.]+)\] \|$", rows[name]).groups())
        assert 0 < low <= median <= high
    assert "round 2/2" in out.stderr
    assert "the other memory layout: channels-last (NHWC)" in rows["layout"]  # cpu_small trains NCHW
    assert (
        "the other RoIAlign: a RoIAlign call per FPN level" in rows["pooler"]
    )  # and pools in one fused call


@pytest.mark.e2e
def test_backbone_levers_time_each_layout_and_folding():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "backbone_levers.py"),
            "--size",
            "64",
            "96",
            "--rounds",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {"variant", "nchw", "nchw+fold", "channels_last", "channels_last+fold"}, out.stdout
    assert rows["nchw"].rstrip().endswith("| 1.000 |") and "round 2/2" in out.stderr


@pytest.mark.e2e
def test_levers_benchmark_refuses_an_unknown_variant():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "levers.py"), "--only", "warp_drive"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "warp_drive" in out.stderr and "compile_heads" in out.stderr
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "levers.py"), "--only", "cuda_graphs"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "cuda_graphs needs --device cuda" in out.stderr


@pytest.mark.e2e
def test_phases_benchmark_splits_an_iteration_and_profiles():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "phases.py"),
            "--iters",
            "3",
            "--warmup",
            "1",
            "--threads",
            "2",
            "--profile",
            "1",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        if (
            line.startswith("| ")
            and "---" not in line
            and not line.startswith("| phase")
            and not line.startswith("| part")
        ):
            name, *cells = [c.strip() for c in line.strip("|").split("|")]
            rows[name] = [float(c) for c in cells]
    for impl in (0, 1):  # reference, torchvision
        # the parts inside a phase add up to it, and the phases to no more than the whole iteration
        assert rows["rpn head convs"][impl] + rows["rpn: anchors, matching, sampling, proposals, loss"][
            impl
        ] == pytest.approx(rows["rpn fwd+loss"][impl], abs=0.2)
        inner = rows["RoIAlign (box + mask)"][impl] + rows["box + mask heads"][impl]
        assert 0 < inner < rows["roi heads fwd+loss"][impl]
        assert rows["backward"][impl] > 0 and rows["total"][impl] > rows["backbone fwd"][impl]
    assert out.stdout.count("torch.profiler, ") == 2 and "Self CPU" in out.stdout


@pytest.mark.e2e
def test_the_publish_benchmark_publishes_and_republishes_only_what_changed(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "publish_runs.py"),
            "--runs",
            "8",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # two rounds of four runs: one scenario page and the index; one round more rewrites both and copies its
    # files only
    assert out.stdout.startswith("8 run folders: first publish ") and "(2 pages, " in out.stdout, out.stdout
    new_files = sum(
        1
        for p in (tmp_path / "results" / "round-new").rglob("*")
        if p.is_file()
        and p.name in ("run.json", "iterations.jsonl", "log.txt", "telemetry.jsonl", "launch.json")
    )
    assert f"(2 pages written, 0 kept, {new_files} files copied)" in out.stdout, out.stdout
