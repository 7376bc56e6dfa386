"""Where the time goes: the phase probe on a model of known timings, the report's table, plot and
paragraph, and a real phases run of every installed implementation."""

import json
import time

import pytest
import torch
from conftest import run_cli
from mrcnn_bench.harness.engine.phases import PHASES, ROI_REST, RPN_REST, PhaseProbe, window_phases
from mrcnn_bench.harness.engine.timing import IterationTimer
from mrcnn_bench.harness.records.frames import load_runs
from mrcnn_bench.harness.report.tables import phases_markdown


class Sleeps(torch.nn.Module):
    """Sleeps ``seconds`` in its forward, then a real op so that gradients flow."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.w = seconds, torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x * self.w


class Toy(torch.nn.Module):
    """backbone 20 ms, fpn 10 ms, an RPN of 15 ms whose head is 5 ms, RoI heads of 40 ms (pooling 5,
    box head 10, mask head 15, the rest 10 ms), and one .item() per forward (a host-device wait)."""

    def __init__(self):
        super().__init__()
        self.backbone, self.fpn = Sleeps(0.02), Sleeps(0.01)
        self.rpn_head, self.pool, self.box, self.mask = (
            Sleeps(0.005),
            Sleeps(0.005),
            Sleeps(0.01),
            Sleeps(0.015),
        )

    def rpn(self, x):
        time.sleep(0.01)
        return self.rpn_head(x)

    def roi_heads(self, x):
        time.sleep(0.01)
        return self.mask(self.box(self.pool(x)))

    def forward(self, x):
        y = self.fpn(self.backbone(x))
        y = self.roi_heads(self.rpn(y))
        float(y.sum())  # the host reads a device value
        return y.sum()


@pytest.mark.e2e
def test_probe_times_each_phase_and_derives_the_rests():
    model, timer = Toy(), IterationTimer(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = PhaseProbe("cpu", count_syncs_at=0)
    for key, parts in {
        "backbone": [model.backbone],
        "fpn": [model.fpn],
        "rpn": [(model, "rpn")],
        "rpn head": [model.rpn_head],
        "roi heads": [(model, "roi_heads")],
        "roi pooling": [model.pool],
        "box head": [model.box],
        "mask head": [model.mask],
    }.items():
        probe.time(key, *parts)
    probe.lacks("preprocess", "the toy has none")
    probe.attach(timer, model)
    timer.before_train()
    try:
        for _ in range(4):
            loss = model(torch.ones(3))
            time.sleep(0.01)  # counted with the backward: forward's end to the optimizer's step
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            timer.after_step(2, data_time=0.0)
    finally:
        timer.after_train()
    model(torch.ones(3)).backward()
    optimizer.step()  # after training the hooks are gone, the global optimizer ones too
    assert not probe.acc and probe._forward_end is None
    with pytest.raises(ValueError, match="phase 'box heads': expected one of"):
        probe.time("box heads", model.box)  # a misspelt phase is refused, not timed apart
    rows = [r.to_dict() for r in timer.records]
    assert rows[0]["host_syncs"] >= 1 and "host_syncs" not in rows[1]  # counted on iteration 0 only
    ms = window_phases(rows, 1, 4)
    expected = {
        "backbone": 20,
        "fpn": 10,
        "rpn head": 5,
        RPN_REST: 10,
        "roi pooling": 5,
        "box head": 10,
        "mask head": 15,
        ROI_REST: 10,
    }
    for phase, value in expected.items():
        assert ms[phase] == pytest.approx(value, abs=4), (phase, ms)
    assert (
        ms["backward"] >= 10
        and "preprocess" not in ms
        and probe.missing == {"preprocess": "the toy has none"}
    )
    mean_iteration = 1e3 * sum(r["duration"] for r in rows[1:]) / 3
    assert sum(ms.values()) == pytest.approx(mean_iteration, rel=1e-6) and ms["other"] >= 0
    assert list(ms) == [p for p in PHASES if p in ms]


def _record(tmp_path, impl, phases_ms, missing=None, syncs=10):
    from test_report_regress import write_run

    total = sum(phases_ms.values()) / 1e3
    d = write_run(tmp_path, "ph", impl, [total] * 8, warmup=2)
    record = json.loads((d / "run.json").read_text())
    record["summary"].update(
        phases_ms=phases_ms, phases_missing=missing or {}, phases_notes=[], host_syncs_per_step=syncs
    )
    (d / "run.json").write_text(json.dumps(record))


@pytest.mark.e2e
def test_report_table_dashes_and_the_paragraph_on_the_gap(tmp_path):
    base = {p: 10.0 for p in PHASES}
    _record(tmp_path, "fast", base, syncs=12)
    slow = dict(base, backward=110.0, **{"roi pooling": 40.0, "box head": 15.0})
    del slow["preprocess"]
    _record(tmp_path, "slow", slow, missing={"preprocess": "a method inside the loop"}, syncs=40)
    md = phases_markdown(load_runs([tmp_path]))
    lines = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in md.splitlines()
        if line.startswith("| ")
    }
    assert lines["phase (ms per iteration)"] == ["fast", "slow"]
    assert lines["backward"] == ["10.0", "110.0"] and lines["preprocess"] == ["10.0", "— [1]"]
    assert lines["host-device waits per step"] == ["12", "40"]
    assert "[1] slow, preprocess: a method inside the loop" in md
    # slow is 125 ms slower (less the 10 ms of the phase it lacks): backward 100, pooling 30, box head 5
    assert (
        "- slow: +125.0 ms per iteration against fast; most of it: backward +100.0 ms (80%), roi pooling "
        "+30.0 ms (24%), "
        "box head +5.0 ms (4%)." in md
    )
    assert "MFU" not in md  # records without the phases' FLOPs: no MFU table
    flops = {
        "backbone": 4e9,
        "fpn": 1e9,
        "rpn head": 1e9,
        "box head": 2e9,
        "mask head": 2e9,
        "backward": 20e9,
        "total": 30e9,
    }
    for path in tmp_path.rglob("run.json"):
        record = json.loads(path.read_text())
        record["summary"].update(phases_flops=flops, matmul_peak_flops_per_process=1e12)
        path.write_text(json.dumps(record))
    md = phases_markdown(load_runs([tmp_path]))
    # backbone: 4 GFLOP in 10 ms on a 1 TFLOP/s peak: 40%; the slow one's backward 20 GFLOP in 110 ms: 18%
    mfu = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in md.split("MFU (model FLOPs")[1].splitlines()
        if line.startswith("| ")
    }
    assert mfu["backbone"] == ["4", "40%", "40%"]
    assert mfu["backward"] == ["20", "200%", "18%"]
    assert run_cli("report", tmp_path, "--plots", tmp_path / "p").returncode == 0
    from mrcnn_bench.harness.report.plots import phases_plot

    png = phases_plot(load_runs([tmp_path]), tmp_path / "phases.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
@pytest.mark.long  # all four with the phase probe: 2 minutes here (make test-long; the rehearsal too)
def test_phases_of_every_implementation_in_their_own_loops(tmp_path):
    out = run_cli(
        "phases",
        "--impl",
        "all",
        "--config",
        "cpu_small",
        "--set",
        "benchmark.iters=3",
        "--set",
        "benchmark.warmup=1",
        "--set",
        "benchmark.window_end=3",
        "--out",
        tmp_path,
        "--run-id",
        "p",
        "--threads",
        "2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = {r["impl"]: r for r in load_runs([tmp_path / "p"])}
    for impl, record in records.items():
        s = record["summary"]
        ms = s["phases_ms"]
        for phase in (
            "backbone",
            "fpn",
            "rpn head",
            RPN_REST,
            "roi pooling",
            "box head",
            "mask head",
            ROI_REST,
            "backward",
            "optimizer",
            "preprocess",
        ):
            assert ms.get(phase, 0) > 0, (impl, phase, ms)
        assert sum(ms.values()) == pytest.approx(1e3 * s["s_per_iter_mean"], rel=1e-6)
        assert s["host_syncs_per_step"] > 0, impl
        assert record["config"]["benchmark"]["phases"] is True
    assert "host-device waits per step" in out.stdout and "ms per iteration against" in out.stdout
