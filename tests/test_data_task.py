"""``run --task data``: each implementation's own training input pipeline without the model, batch by batch."""
import json

from conftest import run_cli

from mrcnn_bench.harness.frames import load_runs


def test_the_input_pipeline_of_every_implementation_alone(tmp_path):
    out = run_cli("run", "--impl", "all", "--task", "data", "--config", "cpu_small", "--out", tmp_path, "--run-id", "d",
                  "--threads", "2", "--set", "benchmark.iters=10", "--set", "benchmark.warmup=2", "--set", "benchmark.window_end=10")
    assert out.returncode == 0, out.stderr[-3000:]
    records = {r["impl"]: r for r in load_runs([tmp_path / "d"])}
    assert set(records) == {"reference", "torchvision", "detectron2", "mmdet"}, set(records)
    for impl, record in records.items():
        s = record["summary"]
        assert record["status"] == "ok" and s["task"] == "data" and s["iterations"] == 8, impl
        rows = [json.loads(line) for line in (tmp_path / "d" / impl / "iterations.jsonl").read_text().splitlines()]
        # cpu_small's batch: 2 images a step on one process, every batch on the device
        assert [r["iter"] for r in rows] == list(range(10)) and all(r["images"] == 2 for r in rows), impl
        assert s["images"] == 16 and s["images_per_s"] == 2 * s["batches_per_s"] > 0, impl
        assert s["images_per_s"] == 16 / (rows[9]["end_time"] - rows[1]["end_time"]), impl
        assert 0 < s["latency_ms_p50"] <= s["latency_ms_p90"] <= s["latency_ms_p99"], impl
        assert 0 < s["first_batch_s"] == rows[0]["end_time"], impl
        # one loader worker (cpu_small's num_workers), alive while measured
        assert s["num_workers"] == 1 and s["workers"] >= 1 and s["workers_uss_mb"] > 0 and s["rss_mb"] > 100, impl
    assert "12 batches" not in out.stderr and "10 batches of its training loader, 1 loader worker(s)" in out.stderr
    assert "### Input pipeline (each framework's own training loader, without the model)" in out.stdout
    report = run_cli("report", tmp_path / "d")
    assert report.returncode == 0 and "latency p50 / p90 / p99 (ms)" in report.stdout
    two = run_cli("run", "--impl", "reference", "--task", "data", "--gpus", "2", "--out", tmp_path, "--run-id", "e")
    assert two.returncode == 2 and "--task data runs on one process" in two.stderr
