"""``--task data``: each implementation's own training input pipeline without the model — its dataset,
mapper, sampler in the run's data order, collate, and the copy of each batch to the device that its
training loop makes (``Adapter.input_pipeline``) — timed batch by batch: batches and images per second
over the window [warmup, end), the latency of each batch (p50/p90/p99), the time from start to the first
batch, and the memory of the process and of its loader workers (psutil: RSS, and USS/PSS of workers).
"""

from __future__ import annotations

import gc
import time

from mrcnn_bench.harness.data.stages import STAGES

from .base import RankContext, Task, one_process
from .rank import PartialIterations, native_dict, say, write_record


class Data(Task):
    name = "data"
    help = "data: the training input pipeline alone (batches/s, latency per batch, start-up, memory)"
    trains = False
    readme_section = "data"
    section_title = "Input pipeline (each framework's own training loader, without the model)"

    def check(self, cfg, data_summary: dict) -> None:
        one_process(cfg)

    def work(self, bench) -> str:
        return f"{bench.iters} batches of its training loader, {bench.num_workers} loader worker(s)"

    def run(self, rank: RankContext) -> None:
        import torch
        from mrcnn_bench.harness.records.results import atomic_write_jsonl

        bench, dist = rank.cfg.benchmark, rank.dist
        sync = torch.cuda.synchronize if str(dist.device).startswith("cuda") else (lambda: None)
        partial = PartialIterations(rank.run_dir, dist.rank)
        before = loader_memory()["rss_mb"]  # what the process holds before the loader is built
        start = time.perf_counter()
        batches, to_device = rank.adapter.input_pipeline(rank.cfg, rank.data, dist, native=rank.native)
        rows, last = [], start
        for i in range(bench.iters):
            images = to_device(next(batches))
            sync()
            now = time.perf_counter()
            rows.append(
                {
                    "iter": i,
                    "duration": now - last,
                    "images": images,
                    "end_time": now - start,
                    "wall_time": time.time(),
                }
            )
            partial.write(rows[-1])
            last = now
        memory = loader_memory()  # while the loader's workers are alive
        memory["rss_added_mb"] = memory["rss_mb"] - before
        del batches
        gc.collect()
        summary = {
            **data_summary(rows, bench.warmup, bench.end),
            **memory,
            "num_workers": bench.num_workers,
            "task": self.name,
        }
        summary.update(self._stages(rank, min(bench.end - bench.warmup, STAGE_BATCHES), sync))
        atomic_write_jsonl(rank.run_dir / "iterations.jsonl", rows)
        write_record(
            rank,
            dict(
                native_config=native_dict(rank.native, {}),
                summary=summary,
                iterations_recorded=len(rows),
                window={"warmup": bench.warmup, "end": bench.end, "iters": bench.iters},
                measures=(
                    "the training input pipeline alone: batches and images per second over iterations "
                    "[warmup, end), "
                    "each batch taken from the framework's own loader and copied to the device as its loop "
                    "does"
                ),
            ),
        )
        partial.done()
        say(
            f"{rank.impl}: {summary['images_per_s']:.2f} img/s, {summary['batches_per_s']:.2f} batches/s, "
            "latency p50 "
            f"{summary['latency_ms_p50']:.1f} ms, first batch after {summary['first_batch_s']:.2f} s"
        )

    def _stages(self, rank: RankContext, batches: int, sync) -> dict:
        """At 0 workers, the split of a batch's time into stages (harness/data/stages.py), over a fresh
        pipeline after the window; with workers the stage calls run in other processes: not split."""
        from mrcnn_bench.harness.data.stages import StageSplitError, split_stages

        if rank.cfg.benchmark.num_workers:
            return {
                "stages_missing": "split at 0 loader workers only (the stages run in the workers' processes)"
            }
        try:
            stages = split_stages(rank.adapter, rank.cfg, rank.data, rank.dist, rank.native, batches, sync)
        except (NotImplementedError, StageSplitError) as e:
            say(f"{rank.impl}: no stage split: {e}")
            return {"stages_missing": str(e)}
        say(
            f"{rank.impl}: stages (ms per image) "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages["ms_per_image"].items())
        )
        return {"stages": stages}

    def section(self, df):
        sweep = _counts(df) > 1
        table = sweep_table(df) if sweep else data_table(df)
        if table is None:
            return None
        parts = [table]
        if sweep:
            parts += [
                "Start-up (from building the loader to the first batch) and memory (after the window, the "
                "loader's "
                "workers alive):",
                startup_table(df),
            ]
        stages = stages_table(df)
        if stages is not None:
            parts += [
                "Where a batch's time goes, ms per image, at 0 loader workers (harness/data/stages.py: each "
                "framework's own read, decode, per-image and collate calls timed in its loader, self time):",
                stages,
            ]
        return parts

    def compact(self, df):
        return self.section(df)

    def figures(self, records):
        """With a worker sweep: img/s against loader workers, a line per implementation."""
        import matplotlib.pyplot as plt
        from mrcnn_bench.harness.records.frames import runs_frame

        ok = [r for r in records if r["status"] == "ok"]
        df = runs_frame(ok) if ok else None
        if df is None or _counts(df) < 2:
            return {}
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for impl, runs in df.groupby("impl"):
            points = sorted((s["num_workers"], s["images_per_s"]) for s in runs["summary"])
            ax.plot([w for w, _ in points], [v for _, v in points], marker="o", label=impl)
        ax.set_xlabel("loader workers")
        ax.set_ylabel("img/s (input pipeline alone)")
        ax.set_xticks(sorted({s["num_workers"] for s in df["summary"]}))
        ax.legend(fontsize=8)
        return {"data-workers.png": fig}


def data_summary(rows: list[dict], warmup: int, end: int) -> dict:
    """The window's rates and the latency of its batches; the time to the first batch."""
    import numpy as np

    t0 = rows[warmup - 1]["end_time"] if warmup > 0 else 0.0
    seconds = rows[end - 1]["end_time"] - t0
    window = rows[warmup:end]
    ms = 1e3 * np.array([r["duration"] for r in window])
    images = sum(r["images"] for r in window)
    return {
        "warmup": warmup,
        "end": end,
        "iterations": len(window),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "batches_per_s": len(window) / seconds,
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "first_batch_s": rows[0]["end_time"],
    }


def loader_memory() -> dict:
    """MB: this process's resident memory, and its loader workers' (child processes) unique and
    proportional set sizes, summed (psutil; USS/PSS where the system reports them)."""
    import psutil

    me = psutil.Process()
    uss = pss = 0.0
    workers = me.children(recursive=True)
    for child in workers:
        try:
            info = child.memory_full_info()
        except (psutil.Error, OSError):
            continue
        uss += info.uss
        pss += getattr(info, "pss", 0.0)
    mb = 2.0**20
    return {
        "rss_mb": me.memory_info().rss / mb,
        "workers": len(workers),
        "workers_uss_mb": uss / mb,
        "workers_pss_mb": pss / mb,
    }


#: batches after the window that the stage split reads (at 0 workers)
STAGE_BATCHES = 20

#: a loader under this many times the training step's img/s is flagged as a likely bottleneck
HEADROOM_FLAG = 1.5


def headroom(df, impl: str, scenario: str, images_per_s: float) -> tuple[str, str]:
    """(loader img/s ÷ training img/s, the training runs' data-wait share) against the finished training
    runs of the same implementation and scenario in ``df`` (their median); "-" without one."""
    train = df[
        (df["impl"] == impl)
        & (df["config"] == scenario)
        & (df["status"] == "ok")
        & df["trains"]  # the report's frame says which tasks train (report.tables.task_frame)
    ]
    if not len(train):
        return "-", "-"
    ratio = images_per_s / float(train["images_per_s"].median())
    share = train["data_time_share"].dropna()
    flag = f" (< {HEADROOM_FLAG}×: likely the bottleneck)" if ratio < HEADROOM_FLAG else ""
    return f"{ratio:.1f}×{flag}", f"{100 * float(share.median()):.1f}%" if len(share) else "-"


def data_table(df):
    """Per implementation: img/s and batches/s over the window, latency per batch, the first batch, memory;
    and the headroom over a training run of the same scenario where the report holds one."""
    import pandas as pd

    runs = _finished(df)
    if not len(runs):
        return None
    s = list(runs["summary"])
    room = [
        headroom(df, impl, scenario, x["images_per_s"])
        for impl, scenario, x in zip(runs["impl"], runs["config"], s)
    ]
    return pd.DataFrame(
        {
            "Implementation": list(runs["impl"]),
            "img/s": [f"{x['images_per_s']:.2f}" for x in s],
            "batches/s": [f"{x['batches_per_s']:.2f}" for x in s],
            "latency p50 / p90 / p99 (ms)": [
                f"{x['latency_ms_p50']:.1f} / {x['latency_ms_p90']:.1f} / {x['latency_ms_p99']:.1f}"
                for x in s
            ],
            "first batch (s)": [f"{x['first_batch_s']:.2f}" for x in s],
            "workers": [str(x["num_workers"]) for x in s],
            "RSS (MB)": [_rss(x) for x in s],
            "workers USS / PSS (MB)": [f"{x['workers_uss_mb']:.0f} / {x['workers_pss_mb']:.0f}" for x in s],
            "loader ÷ training img/s": [r[0] for r in room],
            "training's data wait": [r[1] for r in room],
        }
    )


def _rss(summary: dict) -> str:
    """The process's resident memory, and what building and running the loader added to it."""
    added = summary.get("rss_added_mb")
    return f"{summary['rss_mb']:.0f}" + (f" (+{added:.0f})" if added is not None else "")


def startup_table(df):
    """The sweep's start-up and memory: a row per implementation and worker count."""
    import pandas as pd

    runs = _finished(df)
    rows = sorted(zip(runs["impl"], runs["summary"]), key=lambda r: (r[0], r[1]["num_workers"]))
    return pd.DataFrame(
        {
            "Implementation": [impl for impl, _ in rows],
            "workers": [str(s["num_workers"]) for _, s in rows],
            "first batch (s)": [f"{s['first_batch_s']:.2f}" for _, s in rows],
            "RSS (MB, + the loader's)": [_rss(s) for _, s in rows],
            "workers USS / PSS (MB)": [
                f"{s['workers_uss_mb']:.0f} / {s['workers_pss_mb']:.0f}" for _, s in rows
            ],
        }
    )


def _finished(df):
    """The finished data runs of the frame."""
    return df[(df["task"] == "data") & (df["status"] == "ok")]


def _counts(df) -> int:
    runs = _finished(df)
    return len({s["num_workers"] for s in runs["summary"]})


def sweep_table(df):
    """The worker sweep: a row per loader worker count, a column per implementation (img/s, the latency
    p50 of a batch, and the headroom over a training run of the same scenario where the report has one)."""
    import pandas as pd

    runs = _finished(df)
    cells = {}
    for impl, scenario, s in zip(runs["impl"], runs["config"], runs["summary"]):
        ratio, _ = headroom(df, impl, scenario, s["images_per_s"])
        cells[s["num_workers"], impl] = f"{s['images_per_s']:.1f} img/s, p50 {s['latency_ms_p50']:.1f} ms" + (
            f", {ratio} training's" if ratio != "-" else ""
        )
    counts = sorted({w for w, _ in cells})
    impls = list(dict.fromkeys(runs["impl"]))
    return pd.DataFrame(
        {"loader workers": counts, **{i: [cells.get((w, i), "-") for w in counts] for i in impls}}
    )


def stages_table(df):
    """Per implementation, the stage split of its 0-worker run: ms per image for read, decode, transform,
    collate, the copy to the device and the rest; what its "transform" holds; or why it has none."""
    import pandas as pd

    runs = _finished(df)
    rows = []
    for impl, s in zip(runs["impl"], runs["summary"]):
        if s.get("num_workers"):
            continue
        stages = s.get("stages")
        ms = stages["ms_per_image"] if stages else {}
        row = {
            "Implementation": impl,
            **{name: f"{ms[key]:.2f}" if key in ms else "—" for key, name in _STAGE_COLUMNS},
        }
        row["total"] = f"{sum(ms.values()):.2f}" if ms else "—"
        row["transform holds"] = (
            stages["transform_holds"] if stages else f"— ({s.get('stages_missing', 'not split')})"
        )
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


_STAGE_COLUMNS = [(key, key.replace("_", " ")) for key in STAGES]
