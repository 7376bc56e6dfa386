"""``run --task data``: each implementation's own training input pipeline without the model, batch by batch."""
import json
import statistics

import pandas as pd
from conftest import ROOT, run_cli

from mrcnn_bench.harness.frames import load_runs


def test_the_input_pipeline_of_every_implementation_alone(tmp_path):
    out = run_cli("run", "--impl", "all", "--task", "data", "--workers", "1", "--config", "cpu_small", "--out", tmp_path,
                  "--run-id", "d", "--threads", "2", "--set", "benchmark.iters=10", "--set", "benchmark.warmup=2",
                  "--set", "benchmark.window_end=10")
    assert out.returncode == 0, out.stderr[-3000:]
    records = {r["impl"]: r for r in load_runs([tmp_path / "d" / "w1"])}
    assert set(records) == {"reference", "torchvision", "detectron2", "mmdet"}, set(records)
    for impl, record in records.items():
        s = record["summary"]
        assert record["status"] == "ok" and s["task"] == "data" and s["iterations"] == 8, impl
        rows = [json.loads(line) for line in (tmp_path / "d" / "w1" / impl / "iterations.jsonl").read_text().splitlines()]
        # cpu_small's batch: 2 images a step on one process, every batch on the device
        assert [r["iter"] for r in rows] == list(range(10)) and all(r["images"] == 2 for r in rows), impl
        assert s["images"] == 16 and s["images_per_s"] == 2 * s["batches_per_s"] > 0, impl
        assert s["images_per_s"] == 16 / (rows[9]["end_time"] - rows[1]["end_time"]), impl
        assert 0 < s["latency_ms_p50"] <= s["latency_ms_p90"] <= s["latency_ms_p99"], impl
        assert 0 < s["first_batch_s"] == rows[0]["end_time"], impl
        # one loader worker (cpu_small's num_workers), alive while measured
        assert s["num_workers"] == 1 and s["workers"] >= 1 and s["workers_uss_mb"] > 0 and s["rss_mb"] > 100, impl
    assert "10 batches of its training loader, 1 loader worker(s)" in out.stderr
    assert "### Input pipeline (each framework's own training loader, without the model)" in out.stdout
    report = run_cli("report", tmp_path / "d")
    assert report.returncode == 0 and "latency p50 / p90 / p99 (ms)" in report.stdout
    # beside the committed training runs of the same scenario: the loader's headroom over the training step
    baseline = ROOT / "results" / "baselines" / "cpu_small"
    both = run_cli("report", tmp_path / "d", baseline)
    train = {}
    for r in load_runs([baseline]):
        train.setdefault(r["impl"], []).append(r["summary"]["images_per_s"])
    row = next(line for line in both.stdout.splitlines() if line.startswith("| reference ") and "×" in line)
    expected = records["reference"]["summary"]["images_per_s"] / statistics.median(train["reference"])
    assert f"| {expected:.1f}× " in row and "likely the bottleneck" not in row, row
    # the gate reads data runs as it reads training runs: img/s from the rows, a slowdown per implementation
    gate = run_cli("regress", "--baseline", tmp_path / "d" / "w1", "--candidate", tmp_path / "d" / "w1", "--threshold", "50%")
    assert gate.returncode == 0 and all(f"| {impl} " in gate.stdout for impl in records), gate.stdout + gate.stderr
    assert "1.000 [" in gate.stdout
    two = run_cli("run", "--impl", "reference", "--task", "data", "--workers", "1", "--gpus", "2", "--out", tmp_path, "--run-id", "e")
    assert two.returncode == 2 and "--task data runs on one process" in two.stderr


def test_the_worker_sweep_makes_a_row_per_worker_count_and_a_plot(tmp_path):
    out = run_cli("run", "--impl", "reference,torchvision", "--task", "data", "--workers", "0,1", "--config", "cpu_small",
                  "--out", tmp_path, "--run-id", "s", "--threads", "1", "--set", "benchmark.iters=6", "--set", "benchmark.warmup=1",
                  "--set", "benchmark.window_end=6")
    assert out.returncode == 0, out.stderr[-3000:]
    for n in (0, 1):
        for impl in ("reference", "torchvision"):
            record = json.loads((tmp_path / "s" / f"w{n}" / impl / "run.json").read_text())
            assert record["config"]["benchmark"]["num_workers"] == n and record["summary"]["num_workers"] == n
            # no loader worker: the batches are made in the training process itself
            assert (record["summary"]["workers"] == 0) == (n == 0), (impl, n, record["summary"]["workers"])
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0].split("|")[1:4]] == ["loader workers", "reference", "torchvision"]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["0", "1"]
    report = run_cli("report", tmp_path / "s", "--plots", tmp_path / "plots")
    assert report.returncode == 0 and (tmp_path / "plots" / "data-workers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli("run", "--impl", "reference", "--workers", "1", "--out", tmp_path, "--run-id", "t")
    assert bad.returncode == 2 and "--workers goes with --task data" in bad.stderr


def test_headroom_flags_a_loader_under_one_and_a_half_times_the_training_step():
    from mrcnn_bench.harness.tasks.data import headroom

    df = pd.DataFrame({"impl": ["a", "a", "a", "b"], "config": ["s", "s", "other", "s"], "status": ["ok", "ok", "ok", "ok"],
                       "task": ["train", "eval", "train", "train"], "images_per_s": [2.0, 4.0, 100.0, 1.0],
                       "data_time_share": [0.10, 0.30, 0.0, None]})
    assert headroom(df, "a", "s", 9.0) == ("3.0×", "20.0%")  # the median of the same scenario's training runs
    assert headroom(df, "b", "s", 1.2) == ("1.2× (< 1.5×: likely the bottleneck)", "-")
    assert headroom(df, "c", "s", 5.0) == ("-", "-")

