"""``run --task data``: each implementation's own training input pipeline without the model, batch by
batch."""

import json
import statistics

import pandas as pd
import pytest
from conftest import ALL_FOUR, ROOT, need_impls, run_cli
from mrcnn_bench.harness.records.frames import load_runs


@pytest.mark.e2e
@pytest.mark.long  # four loaders at two worker counts: 2 minutes here (make test-long; the rehearsal too)
def test_the_input_pipeline_of_every_implementation_alone_at_0_and_1_workers(tmp_path):
    need_impls(*ALL_FOUR)
    out = run_cli(
        "run",
        "--impl",
        "all",
        "--task",
        "data",
        "--workers",
        "0,1",
        "--config",
        "cpu_small",
        "--out",
        tmp_path,
        "--run-id",
        "d",
        "--threads",
        "2",
        "--set",
        "benchmark.iters=10",
        "--set",
        "benchmark.warmup=2",
        "--set",
        "benchmark.window_end=10",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    impls = ["reference", "torchvision", "detectron2", "mmdet"]
    for n in (0, 1):
        records = {r["impl"]: r for r in load_runs([tmp_path / "d" / f"w{n}"])}
        assert set(records) == set(impls), set(records)
        for impl, record in records.items():
            s = record["summary"]
            assert record["status"] == "ok" and s["task"] == "data" and s["iterations"] == 8, impl
            assert record["config"]["benchmark"]["num_workers"] == n == s["num_workers"], impl
            rows = [
                json.loads(line)
                for line in (tmp_path / "d" / f"w{n}" / impl / "iterations.jsonl").read_text().splitlines()
            ]
            # cpu_small's batch: 2 images a step on one process, every batch on the device
            assert [r["iter"] for r in rows] == list(range(10)) and all(r["images"] == 2 for r in rows), impl
            assert s["images"] == 16 and s["images_per_s"] == 2 * s["batches_per_s"] > 0, impl
            assert s["images_per_s"] == 16 / (rows[9]["end_time"] - rows[1]["end_time"]), impl
            assert 0 < s["latency_ms_p50"] <= s["latency_ms_p90"] <= s["latency_ms_p99"], impl
            assert 0 < s["first_batch_s"] == rows[0]["end_time"], impl
            assert s["rss_mb"] > 100 and s["rss_mb"] > s["rss_added_mb"], impl
            if n == 1:  # one loader worker, alive while measured; its stages run in that process: no split
                assert s["workers"] >= 1 and s["workers_uss_mb"] > 0, impl
                assert "stages" not in s and "0 loader workers only" in s["stages_missing"], impl
                continue
            # no worker: the batches are made in this process, and split into its loader's own calls
            assert s["workers"] == 0, impl
            stages = s["stages"]
            # 8 batches after the first: each stage's call ran once per image (the collate once per batch)
            assert stages["batches"] == 8 and stages["images"] == 16, impl
            assert stages["calls"] == {"read": 16, "decode": 16, "transform": 16, "collate": 8}, (
                impl,
                stages["calls"],
            )
            ms = stages["ms_per_image"]
            assert set(ms) == {"read", "decode", "transform", "collate", "to_device", "other"}, impl
            assert (
                all(v >= 0 for v in ms.values())
                and ms["read"] > 0
                and ms["decode"] > 0
                and ms["transform"] > 0
            ), impl
    assert "10 batches of its training loader, 1 loader worker(s)" in out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    # the sweep: a row per worker count, a column per implementation; then the stage split at 0 workers
    assert [c.strip() for c in lines[0].split("|")[1:6]] == ["loader workers", *impls]
    assert [r.split("|")[1].strip() for r in lines[1:3]] == ["0", "1"]
    headers = [
        [c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| Implementation ")
    ]
    # start-up and memory per implementation and worker count; the stage split at 0 workers
    assert headers == [
        [
            "Implementation",
            "workers",
            "first batch (s)",
            "RSS (MB, + the loader's)",
            "workers USS / PSS (MB)",
        ],
        [
            "Implementation",
            "read",
            "decode",
            "transform",
            "collate",
            "to device",
            "other",
            "total",
            "transform holds",
        ],
    ], headers
    startup = [
        [c.strip() for c in line.split("|")[1:3]]
        for line in lines
        if line.split("|")[2].strip() in ("0", "1")
    ]
    assert startup == [[impl, n] for impl in sorted(impls) for n in ("0", "1")], startup
    assert "no resize (the model resizes on the device)" in out.stdout and "ResizeShortestEdge" in out.stdout
    report = run_cli("report", tmp_path / "d" / "w1", "--plots", tmp_path / "plots")
    assert report.returncode == 0 and "latency p50 / p90 / p99 (ms)" in report.stdout
    sweep = run_cli("report", tmp_path / "d", "--plots", tmp_path / "plots")
    assert (
        sweep.returncode == 0
        and (tmp_path / "plots" / "data-workers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )
    # beside the committed training runs of the same scenario: the loader's headroom over the training step
    baseline = ROOT / "results" / "baselines" / "cpu_small"
    both = run_cli("report", tmp_path / "d" / "w1", baseline)
    train = {}
    for r in load_runs([baseline]):
        train.setdefault(r["impl"], []).append(r["summary"]["images_per_s"])
    row = next(line for line in both.stdout.splitlines() if line.startswith("| reference ") and "×" in line)
    w1 = {r["impl"]: r for r in load_runs([tmp_path / "d" / "w1"])}
    expected = w1["reference"]["summary"]["images_per_s"] / statistics.median(train["reference"])
    assert f"| {expected:.1f}× " in row and "likely the bottleneck" not in row, row
    # the gate reads data runs as it reads training runs: img/s from the rows, a slowdown per implementation
    gate = run_cli(
        "regress",
        "--baseline",
        tmp_path / "d" / "w1",
        "--candidate",
        tmp_path / "d" / "w1",
        "--threshold",
        "50%",
    )
    assert gate.returncode == 0 and all(f"| {impl} " in gate.stdout for impl in impls), (
        gate.stdout + gate.stderr
    )
    assert "1.000 [" in gate.stdout
    two = run_cli(
        "run",
        "--impl",
        "reference",
        "--task",
        "data",
        "--workers",
        "1",
        "--gpus",
        "2",
        "--out",
        tmp_path,
        "--run-id",
        "e",
    )
    assert two.returncode == 2 and "--task data runs on one process" in two.stderr
    bad = run_cli("run", "--impl", "reference", "--workers", "1", "--out", tmp_path, "--run-id", "t")
    assert bad.returncode == 2 and "--workers goes with --task data" in bad.stderr


def test_the_stage_clock_keeps_each_calls_self_time(monkeypatch, tmp_path):
    """On a fake clock that the calls advance (every open 0.5 s): the per-image call's 6 s less the 3 s of
    the decode inside it, the decode's 3 s less the 0.5 s read of the image (a link in the image folder);
    the open of a file outside the image folder is no read (it stays in the decode's time), and the reader
    gets the file's bytes."""
    import builtins

    from mrcnn_bench.harness.data import stages as data_stages

    now = [0.0]
    monkeypatch.setattr(data_stages.time, "perf_counter", lambda: now[0])
    real_open = builtins.open

    def slow_open(*args, **kwargs):
        now[0] += 0.5
        return real_open(*args, **kwargs)

    monkeypatch.setattr(builtins, "open", slow_open)
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "source.jpg").write_bytes(b"jpeg bytes")
    (images / "a.jpg").symlink_to(
        tmp_path / "source.jpg"
    )  # as in the COCO-size set: an image may link elsewhere
    (tmp_path / "other.txt").write_bytes(b"not an image")
    clock = data_stages.StageClock()

    def decode(path):
        with open(path, "rb") as f:
            data = f.read()
        now[0] += 2.0
        with open(tmp_path / "other.txt", "rb") as f:
            assert f.read() == b"not an image"
        return data

    def item(path):
        now[0] += 1.0
        out = timed_decode(path)
        now[0] += 2.0
        return out

    timed_decode = clock.timed("decode", decode)
    with data_stages.timed_reads(images, clock):
        assert clock.timed("transform", item)(images / "a.jpg") == b"jpeg bytes"
    assert dict(clock.calls) == {"read": 1, "decode": 1, "transform": 1}
    assert dict(clock.seconds) == {"read": 0.5, "decode": 2.5, "transform": 3.0}
    assert builtins.open is slow_open  # put back


def test_headroom_flags_a_loader_under_one_and_a_half_times_the_training_step():
    from mrcnn_bench.harness.tasks.data import headroom

    df = pd.DataFrame(
        {
            "impl": ["a", "a", "a", "b"],
            "config": ["s", "s", "other", "s"],
            "status": ["ok", "ok", "ok", "ok"],
            "task": ["train", "eval", "train", "train"],
            "trains": [True, True, True, True],  # the report's frame says so (report.tables.task_frame)
            "images_per_s": [2.0, 4.0, 100.0, 1.0],
            "data_time_share": [0.10, 0.30, 0.0, None],
        }
    )
    assert headroom(df, "a", "s", 9.0) == ("3.0×", "20.0%")  # the median of the same scenario's training runs
    assert headroom(df, "b", "s", 1.2) == ("1.2× (< 1.5×: likely the bottleneck)", "-")
    assert headroom(df, "c", "s", 5.0) == ("-", "-")
