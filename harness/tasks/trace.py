"""``--task trace`` (``mrcnn-bench trace``): the same steps of every implementation under torch.profiler,
inside each framework's own loop — the shared weights, the batches of the run's order, iterations
[warmup, warmup + trace_steps) — with the phases of ``mrcnn-bench phases`` as named ranges on the
timeline (harness/engine/phases.py, ``ranges``). Each implementation's trace is written to its run folder as
``trace-<impl>.json.gz`` (Chrome trace format: Perfetto UI or chrome://tracing open it), and run.json's
``summary.trace`` holds what the report compares: the top operators by self CPU time (CPU) or the top
kernels by device time (CUDA), the ranges of the phases per step, and on CUDA the GPU's idle time and
temporal breakdown from Holistic Trace Analysis where it is installed.

The profiler is narrow on purpose: no stacks, no shapes, no memory, one window of ``trace_steps`` steps
(mmdet's CPU training step, profiled with more, has been seen to hang here for over 20 minutes); the
launcher's per-implementation time limit (``--timeout``) bounds each trace.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from mrcnn_bench.harness.engine.timing import TimerListener

from .base import RankContext, TaskError, one_process
from .rank import say
from .train import Train

TOP = 100  # operators or kernels kept per trace (by time): what the diff reads


class Trace(Train):
    name = "trace"
    help = "trace: the same steps under torch.profiler in every framework's loop (Perfetto traces, top ops)"
    trains = False  # the profiler perturbs the step: its window is not a throughput
    phase_ranges = True
    command = "trace"
    readme_section = "trace"
    section_title = "Traces (the same steps of each implementation under torch.profiler)"

    def check(self, cfg, data_summary: dict) -> None:
        one_process(cfg)
        bench = cfg.benchmark
        if bench.warmup + bench.trace_steps > bench.iters:
            raise TaskError(
                f"benchmark.trace_steps {bench.trace_steps} after benchmark.warmup {bench.warmup} needs "
                f"benchmark.iters >= {bench.warmup + bench.trace_steps} (it is {bench.iters})"
            )

    def configure(self, cfg):
        """Training stops after the traced steps: the iterations after them would be timed for nothing."""
        bench = cfg.benchmark
        stop = bench.warmup + bench.trace_steps
        if bench.iters <= stop:
            return cfg
        return cfg.with_overrides(
            {"benchmark.iters": stop, "benchmark.window_end": stop},
            source="trace (it stops after its traced steps)",
        )

    def work(self, bench) -> str:
        traced = f"[{bench.warmup}, {bench.warmup + bench.trace_steps})"
        return f"{bench.iters} iterations, iterations {traced} under torch.profiler"

    def listeners(self, rank: RankContext) -> list:
        bench = rank.cfg.benchmark
        self.probe = TraceProbe(
            rank.run_dir / f"trace-{rank.impl}.json.gz", rank.dist.device, bench.warmup, bench.trace_steps
        )
        return [self.probe]

    def after_training(self, rank: RankContext) -> dict:
        if self.probe.summary is None:
            raise RuntimeError(
                f"{rank.impl}: the profiler's window [{self.probe.start}, "
                f"{self.probe.start + self.probe.steps}) "
                "did not close"
            )
        s = self.probe.summary
        say(f"{rank.impl}: trace of {s['steps']} steps: {s['file']} ({s['bytes'] / 2**20:.1f} MiB)")
        return {"trace": s}

    def section(self, df):
        runs = df[df["task"] == self.name]
        top, diff = top_table(runs, df), diff_table(runs)
        if top is None:
            return None
        parts = [
            top,
            "Open a trace in https://ui.perfetto.dev or chrome://tracing; the phases are the ranges named "
            '"mrcnn-bench: <phase>" (docs/traces.md).',
        ]
        if diff is not None:
            parts += [
                "Where the time goes apart, against the reference (ms per step; positive: this "
                "implementation "
                "spends more):",
                diff,
            ]
        return parts

    def compact(self, df):
        return self.section(df)


class TraceProbe(TimerListener):
    """Starts torch.profiler when iteration ``start - 1`` has been stamped (at the start with ``start`` 0),
    marks each traced iteration with a range ``ProfilerStep#<iteration>``, and stops after ``steps``
    iterations: the trace exported, its tables computed."""

    def __init__(self, path: Path, device: str, start: int, steps: int):
        self.path, self.device, self.start, self.steps = path, str(device), start, steps
        self.profiler, self.summary, self._range, self._done = None, None, None, 0

    def before_train(self) -> None:
        if self.start == 0:
            self._begin()

    def after_step(self, record) -> None:
        if self.profiler is not None:
            self._range.__exit__(None, None, None)
            self._done += 1
            if self._done == self.steps:
                return self._finish()
            self._mark(record.iter + 1)
        elif record.iter == self.start - 1:
            self._begin()

    def after_train(self) -> None:
        if self.profiler is not None:  # training ended inside the window: let the profiler go
            self.profiler.stop()
            self.profiler = None

    def _begin(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if self.device.startswith("cuda") else []
        )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.profiler = profile(
            activities=activities, record_shapes=False, with_stack=False, profile_memory=False
        )
        self.profiler.start()
        self._mark(self.start)

    def _mark(self, iteration: int) -> None:
        import torch

        # named as torch.profiler names a step (profile.step()): what Holistic Trace Analysis cuts a trace by
        self._range = torch.profiler.record_function(f"ProfilerStep#{iteration}").__enter__()

    def _finish(self) -> None:
        prof, self.profiler = self.profiler, None
        prof.stop()
        cuda = self.device.startswith("cuda")
        top = (
            None if cuda else top_operators(prof, self.steps)
        )  # on CUDA the kernels come from the trace below
        prof.export_chrome_trace(str(self.path))
        events = json.loads(gzip.decompress(self.path.read_bytes()))
        events = events.get("traceEvents", events) if isinstance(events, dict) else events
        self.summary = {
            "file": self.path.name,
            "bytes": self.path.stat().st_size,
            "steps": self.steps,
            "first_step": self.start,
            "device": "cuda" if cuda else "cpu",
            "top": kernels(events, self.steps) if cuda else top,
            "top_kind": "kernels by device time" if cuda else "operators by self CPU time",
            "ranges_ms": ranges(events, self.steps),
        }
        if cuda:
            self.summary.update(gpu_idle(self.path))


def top_operators(prof, steps: int) -> list[dict]:
    """The operators by self CPU time: ms and calls per step (the profiler's own averages)."""
    rows = [
        {"name": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0 and not e.key.startswith(("mrcnn-bench: ", "ProfilerStep#"))
    ]
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:TOP]


def kernels(events: list[dict], steps: int) -> list[dict]:
    """The CUDA kernels of a trace by device time: ms and launches per step."""
    total, count = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") == "kernel":
            total[e["name"]] += e.get("dur", 0.0)
            count[e["name"]] += 1
    rows = [
        {"name": n, "ms_per_step": total[n] / 1e3 / steps, "calls_per_step": count[n] / steps} for n in total
    ]
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:TOP]


def ranges(events: list[dict], steps: int) -> dict[str, float]:
    """ms per step inside each range of the phases (and the iterations), as the trace holds them."""
    from mrcnn_bench.harness.engine.phases import RANGE_PREFIX

    total = defaultdict(float)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or e.get("cat") not in ("user_annotation", "cpu_op", None):
            continue
        if name.startswith("ProfilerStep#"):
            total["iteration"] += e.get("dur", 0.0) / 1e3 / steps
        elif name.startswith(RANGE_PREFIX):
            total[name[len(RANGE_PREFIX) :]] += e.get("dur", 0.0) / 1e3 / steps
    return dict(total)


def gpu_idle(path: Path) -> dict:
    """Holistic Trace Analysis on a CUDA trace: the GPU's idle time per step and its share, and the temporal
    breakdown (compute, non-compute, idle); ``hta_missing`` with the reason where it cannot run."""
    import shutil
    import tempfile

    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError:
        return {"hta_missing": "Holistic Trace Analysis is not installed (pip install HolisticTraceAnalysis)"}
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(path, Path(folder) / "rank-0.json.gz")
        try:
            analysis = TraceAnalysis(trace_dir=folder)
            temporal = analysis.get_temporal_breakdown(visualize=False)
            idle = analysis.get_idle_time_breakdown(visualize=False)
        except Exception as e:  # HTA's parsing of a trace it does not expect
            return {"hta_missing": f"Holistic Trace Analysis failed on {path.name}: {type(e).__name__}: {e}"}
    row = temporal.iloc[0].to_dict()
    idle_frame = idle[0] if isinstance(idle, tuple) else idle
    return {
        "gpu_temporal": {k: float(v) for k, v in row.items() if isinstance(v, (int, float))},
        "gpu_idle_by_category": idle_frame.to_dict(orient="records"),
    }


def _top_of(runs):
    for impl, s in zip(runs["impl"], runs["summary"]):
        if s.get("trace"):
            yield impl, s["trace"]


def _link(run_json: str | None, name: str) -> str:
    """The trace file as a Markdown link, relative to where the report is made (absolute outside it)."""
    import os

    if not run_json:
        return name
    path = Path(run_json).parent / name
    try:
        return f"[{name}]({os.path.relpath(path)})"
    except ValueError:
        return f"[{name}]({path})"


def _host_waits(df, impl: str) -> str:
    """The host-device waits per step of the implementation's phases runs in the same report (their
    median)."""
    if df is None or "host_syncs" not in df:
        return "-"
    waits = df[(df["impl"] == impl) & df["host_syncs"].notna()]["host_syncs"]
    return f"{waits.median():.0f}" if len(waits) else "-"


def top_table(runs, df=None):
    """Per implementation: its trace file (linked), the phases' ranges per step, and its five heaviest
    operators
    (or kernels), the GPU's idle share beside the host-device waits of a phases run in the same report
    (``df``);
    "—" and the reason for a trace that did not finish (its time limit, a failure)."""
    import pandas as pd

    rows = [
        {"Implementation": impl, "trace": f"— ({status}: {reason})"}
        for impl, status, reason in zip(runs["impl"], runs["status"], runs["reason"])
        if status != "ok"
    ]
    for impl, t, path in (
        (i, s["trace"], p) for i, s, p in zip(runs["impl"], runs["summary"], runs["path"]) if s.get("trace")
    ):
        heavy = "; ".join(f"{r['name']} {r['ms_per_step']:.1f}" for r in t["top"][:5])
        phases = ", ".join(f"{k} {v:.0f}" for k, v in t["ranges_ms"].items() if k != "iteration")
        idle = t.get("gpu_temporal", {}).get("idle_time_pctg")
        rows.append(
            {
                "Implementation": impl,
                "trace": _link(path, t["file"]),
                "steps": f"[{t['first_step']}, {t['first_step'] + t['steps']})",
                "ms per step": f"{t['ranges_ms'].get('iteration', float('nan')):.0f}",
                "GPU idle": f"{idle:.1f}%"
                if idle is not None
                else ("—" if t["device"] == "cpu" else f"— ({t.get('hta_missing', 'not analysed')})"),
                "host-device waits per step (phases)": _host_waits(df, impl),
                f"top {t['top_kind']} (ms per step)": heavy,
                "phase ranges (ms per step)": phases,
            }
        )
    return pd.DataFrame(rows).fillna("—") if rows else None


def diff(base: list[dict], other: list[dict], k: int = 10) -> list[dict]:
    """The operators (or kernels) whose ms per step differ most between two traces' tops: other − base."""
    b = {r["name"]: r["ms_per_step"] for r in base}
    o = {r["name"]: r["ms_per_step"] for r in other}
    rows = [
        {
            "name": n,
            "delta_ms": o.get(n, 0.0) - b.get(n, 0.0),
            "base_ms": b.get(n, 0.0),
            "other_ms": o.get(n, 0.0),
        }
        for n in set(b) | set(o)
    ]
    rows = [r for r in rows if r["delta_ms"] != 0.0]
    return sorted(rows, key=lambda r: -abs(r["delta_ms"]))[:k]


def diff_table(runs, base_impl: str = "reference"):
    import pandas as pd

    traces = dict(_top_of(runs))
    if base_impl not in traces or len(traces) < 2:
        return None
    rows = []
    for impl, t in traces.items():
        if impl == base_impl:
            continue
        for r in diff(traces[base_impl]["top"], t["top"], k=5):
            rows.append(
                {
                    "Implementation": impl,
                    "operator or kernel": r["name"],
                    f"{base_impl} (ms)": f"{r['base_ms']:.1f}",
                    "this (ms)": f"{r['other_ms']:.1f}",
                    "difference (ms per step)": f"{r['delta_ms']:+.1f}",
                }
            )
    return pd.DataFrame(rows) if rows else None
