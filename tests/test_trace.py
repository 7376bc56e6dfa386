"""``mrcnn-bench trace``: the same steps of every implementation under torch.profiler, the phases as named
ranges, the top operators and the diff against the reference; a trace past its time limit is reported."""

import gzip
import json

import pytest
from conftest import ALL_FOUR, need_impls, run_cli
from mrcnn_bench.harness.tasks.trace import diff

SHORT = (
    "--config",
    "cpu_small",
    "--threads",
    "2",
    "--set",
    "benchmark.iters=4",
    "--set",
    "benchmark.warmup=2",
    "--set",
    "benchmark.window_end=4",
)
PHASES = {
    "preprocess",
    "backbone",
    "rpn head",
    "roi pooling",
    "box head",
    "mask head",
    "roi heads",
    "rpn",
    "backward",
    "optimizer",
}


@pytest.mark.e2e
@pytest.mark.long  # all four under torch.profiler: 3 minutes here (make test-long; the rehearsal too)
def test_a_trace_of_each_implementation_holds_the_same_steps_and_the_phases_as_ranges(tmp_path):
    need_impls(*ALL_FOUR)
    out = run_cli("trace", "--impl", "all", *SHORT, "--out", tmp_path, "--run-id", "t", "--timeout", "600")
    assert out.returncode == 0, out.stderr[-3000:]
    tops = {}
    for impl in ("reference", "torchvision", "detectron2", "mmdet"):
        folder = tmp_path / "t" / impl
        record = json.loads((folder / "run.json").read_text())
        assert record["status"] == "ok" and record["config"]["benchmark"]["task"] == "trace", (
            impl,
            record.get("reason"),
        )
        t = record["summary"]["trace"]
        assert t["file"] == f"trace-{impl}.json.gz" and t["steps"] == 2 and t["first_step"] == 2
        events = json.loads(gzip.decompress((folder / t["file"]).read_bytes()))["traceEvents"]
        names = {e["name"] for e in events if e.get("ph") == "X"}
        # the traced iterations, marked, and inside them the phases under the same names in all four
        assert {"ProfilerStep#2", "ProfilerStep#3"} <= names, (
            impl
        )  # as torch.profiler names steps (HTA reads them)
        assert "ProfilerStep#1" not in names and "ProfilerStep#4" not in names, impl
        assert {f"mrcnn-bench: {p}" for p in PHASES} <= names, (
            impl,
            sorted(n for n in names if n.startswith("mrcnn")),
        )
        assert (
            PHASES <= set(t["ranges_ms"]) and t["ranges_ms"]["iteration"] > t["ranges_ms"]["backward"] > 0
        ), impl
        # the top operators by self CPU time, as the profiler averages them over the two steps
        assert t["top_kind"] == "operators by self CPU time" and len(t["top"]) > 10
        assert [r["ms_per_step"] for r in t["top"]] == sorted(
            (r["ms_per_step"] for r in t["top"]), reverse=True
        )
        assert "aten::convolution_backward" in {r["name"] for r in t["top"]}, impl
        tops[impl] = t["top"]
    # the tables: a row per implementation, the diff against the reference made of the tops' differences
    assert "### Traces (the same steps of each implementation under torch.profiler)" in out.stdout
    assert "[trace-mmdet.json.gz](" in out.stdout and "difference (ms per step)" in out.stdout
    first = diff(tops["reference"], tops["torchvision"])[0]
    ref, tv = ({r["name"]: r["ms_per_step"] for r in tops[i]} for i in ("reference", "torchvision"))
    assert first["delta_ms"] == tv.get(first["name"], 0.0) - ref.get(first["name"], 0.0) != 0
    assert f"| torchvision      | {first['name']}" in out.stdout


@pytest.mark.e2e
def test_a_trace_stops_after_its_traced_steps():
    """`mrcnn-bench trace --config cpu_small` trains iterations [0, warmup + trace_steps), not the config's
    30."""
    from mrcnn_bench.harness.run.suite import RunRequest

    cfg = RunRequest(
        config_name="cpu_small", overrides=("benchmark.task=trace", "benchmark.warmup=3")
    ).config()
    assert (cfg.benchmark.iters, cfg.benchmark.end, cfg.benchmark.trace_steps) == (5, 5, 2)
    train = RunRequest(config_name="cpu_small").config()
    assert (train.benchmark.iters, train.benchmark.end) == (30, 30)  # other tasks keep the config's
    helped = run_cli("trace", "--help")
    assert helped.returncode == 0 and "The same steps under torch.profiler" in helped.stdout, helped.stdout
    assert "Train each implementation" not in helped.stdout and "--repeats" in helped.stdout  # run's options


def test_the_diff_of_a_trace_against_itself_is_empty():
    top = [{"name": "aten::mm", "ms_per_step": 5.0}, {"name": "aten::add", "ms_per_step": 1.0}]
    assert diff(top, top) == []
    assert diff(top, top[:1]) == [{"name": "aten::add", "delta_ms": -1.0, "base_ms": 1.0, "other_ms": 0.0}]


@pytest.mark.e2e
def test_a_trace_past_its_time_limit_is_reported_and_the_others_kept(tmp_path):
    out = run_cli(
        "trace",
        "--impl",
        "reference,torchvision",
        *SHORT,
        "--out",
        tmp_path,
        "--run-id",
        "l",
        "--timeout",
        "4",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    for impl in ("reference", "torchvision"):
        record = json.loads((tmp_path / "l" / impl / "run.json").read_text())
        assert record["status"] == "timeout" and "no result after 4 s" in record["reason"], record
    assert "| reference        | — (timeout: no result after 4 s (--timeout)" in out.stdout, out.stdout
    bad = run_cli(
        "trace",
        "--impl",
        "reference",
        *SHORT,
        "--set",
        "benchmark.trace_steps=3",
        "--out",
        tmp_path,
        "--run-id",
        "b",
    )
    assert (
        bad.returncode == 2
        and "benchmark.trace_steps 3 after benchmark.warmup 2 needs benchmark.iters >= 5" in bad.stderr
    )


def _cuda_like_trace(path):
    """Two 1000-us steps; in each, two 300-us kernels on stream 7, launched 100 us apart after the first's
    end."""
    events = []
    for step in range(2):
        t0 = 1000 + step * 1000
        events.append(
            {
                "ph": "X",
                "cat": "user_annotation",
                "name": f"ProfilerStep#{step}",
                "pid": 100,
                "tid": 100,
                "ts": t0,
                "dur": 1000,
                "args": {},
            }
        )
        for k in range(2):
            ts, corr = t0 + 100 + k * 400, step * 10 + k
            events += [
                {
                    "ph": "X",
                    "cat": "cpu_op",
                    "name": "aten::mm",
                    "pid": 100,
                    "tid": 100,
                    "ts": ts - 50,
                    "dur": 40,
                    "args": {"External id": corr},
                },
                {
                    "ph": "X",
                    "cat": "cuda_runtime",
                    "name": "cudaLaunchKernel",
                    "pid": 100,
                    "tid": 100,
                    "ts": ts - 40,
                    "dur": 10,
                    "args": {"correlation": corr, "External id": corr},
                },
                {
                    "ph": "X",
                    "cat": "kernel",
                    "name": "gemm",
                    "pid": 0,
                    "tid": 7,
                    "ts": ts,
                    "dur": 300,
                    "args": {"stream": 7, "correlation": corr, "device": 0, "External id": corr},
                },
            ]
    trace = {"schemaVersion": 1, "distributedInfo": {"rank": 0}, "traceEvents": events}
    path.write_bytes(gzip.compress(json.dumps(trace).encode()))
    return path


def test_the_gpu_idle_time_of_a_cuda_trace_comes_from_holistic_trace_analysis(tmp_path, monkeypatch):
    import sys

    import pytest
    from mrcnn_bench.harness.tasks.trace import gpu_idle, kernels

    trace = _cuda_like_trace(tmp_path / "trace-x.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert kernels(events, 2) == [{"name": "gemm", "ms_per_step": 0.6, "calls_per_step": 2.0}]
    pytest.importorskip("hta", reason="Holistic Trace Analysis (make setup installs it)")
    found = gpu_idle(trace)
    # a step's kernels span 700 us with a 100-us gap between them: 14.3% idle, the GPU waiting on the host
    assert found["gpu_temporal"]["idle_time(us)"] == 100 and found["gpu_temporal"][
        "idle_time_pctg"
    ] == pytest.approx(14.29)
    waits = {r["idle_category"]: r["idle_time"] for r in found["gpu_idle_by_category"]}
    assert waits["host_wait"] == 100
    monkeypatch.setitem(sys.modules, "hta.trace_analysis", None)
    assert gpu_idle(trace) == {
        "hta_missing": "Holistic Trace Analysis is not installed (pip install HolisticTraceAnalysis)"
    }
