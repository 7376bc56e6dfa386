"""``--task infer``: the framework's own eval path timed per batch size on the val split's images
(harness/engine/inference.py); iterations.jsonl holds each timed call, run.json the stats per batch size. A
call that returned nothing fails the run (``EmptyPath``)."""

from __future__ import annotations

from .base import RankContext, Task, TaskError, one_process, val_split
from .rank import PartialIterations, native_dict, say, write_record


class Infer(Task):
    name = "infer"
    help = "infer: latency per batch size of each framework's eval path"
    trains = False
    readme_section = "inference"
    section_title = "Inference (img/s, latency mean / p90 / p99, detections per image)"

    def check(self, cfg, data_summary: dict) -> None:
        one_process(cfg)
        val = val_split(cfg, data_summary)
        bench = cfg.benchmark
        if max(bench.batch_sizes) > val["images"]:
            raise TaskError(
                f"--batch-sizes {','.join(map(str, bench.batch_sizes))}: batch size {max(bench.batch_sizes)} "
                "is "
                f"larger than the val split ({val['images']} images, data.val_split {cfg.data.val_split})"
            )

    def work(self, bench) -> str:
        sizes = ",".join(map(str, bench.batch_sizes))
        return f"inference, batch sizes {sizes}, {bench.infer_batches} timed calls each"

    def run(self, rank: RankContext) -> None:
        import torch
        from mrcnn_bench.harness.engine.inference import (
            check_not_empty,
            inference_summary,
            load_images,
            time_batches,
        )
        from mrcnn_bench.harness.records.results import atomic_write_jsonl

        bench, data = rank.cfg.benchmark, rank.data
        predict = rank.adapter.predictor(rank.cfg, data, rank.dist, native=rank.native)
        images = [image for _, image in load_images(data.val_json, data.val_images)]
        total = len(bench.batch_sizes) * bench.infer_batches
        partial = PartialIterations(rank.run_dir, rank.dist.rank)

        def on_batch(row):
            partial.write(row)
            n = row["iter"] + 1
            if n == total or n % bench.infer_batches == 0:
                say(
                    f"batch size {row['batch_size']}: {n}/{total} calls, last {row['duration'] * 1e3:.1f} "
                    "ms, "
                    f"{row['detections']} detections"
                )

        autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[bench.dtype]
        rows = time_batches(
            predict,
            images,
            bench.batch_sizes,
            bench.infer_warmup,
            bench.infer_batches,
            rank.dist.device,
            autocast_dtype=autocast,
            on_batch=on_batch,
        )
        check_not_empty(rows, rank.impl)
        summary = inference_summary(rows)
        atomic_write_jsonl(rank.run_dir / "iterations.jsonl", rows)
        write_record(
            rank,
            dict(
                native_config=native_dict(rank.native, {}),
                summary=summary,
                iterations_recorded=len(rows),
                window={"warmup": 0, "end": len(rows), "iters": len(rows)},
                measures=(
                    "inference: images/s and latency per call of the framework's own eval path, decoded "
                    "images in, "
                    "detections with pasted masks out, per batch size; each call closed by a device "
                    "synchronize"
                ),
            ),
        )
        partial.done()
        for size, stats in summary["batch_sizes"].items():
            say(
                f"{rank.impl}: batch {size}: {stats['images_per_s']:.2f} img/s, latency mean "
                f"{stats['latency_ms_mean']:.1f} "
                f"ms, p99 {stats['latency_ms_p99']:.1f} ms, {stats['detections_per_image']:.1f} detections "
                "per image"
            )

    def section(self, df):
        return latency_table(df)

    def compact(self, df):
        return latency_table(df)

    def figures(self, records):
        fig = latency_figure(records)
        return {"latency.png": fig} if fig is not None else {}


def latency_figure(runs: list[dict]):
    """The distribution of each timed call's latency, one panel per batch size, one box per
    implementation; None without a finished run."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from mrcnn_bench.harness.records.frames import iterations_of

    runs = [r for r in runs if r["status"] == "ok"]
    if not runs:
        return None
    calls = pd.DataFrame([dict(impl=r["impl"], **row) for r in runs for row in iterations_of(r)])
    sizes = sorted(calls["batch_size"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        mine = calls[calls["batch_size"] == size]
        impls = sorted(mine["impl"].unique())
        ax.boxplot([mine[mine["impl"] == i]["duration"] * 1e3 for i in impls], showfliers=True)
        ax.set_xticks(range(1, len(impls) + 1), impls, rotation=30, ha="right")
        ax.set_title(f"batch {size}")
        ax.set_ylabel("latency per call (ms)" if size == sizes[0] else "")
    fig.suptitle("Inference latency (each timed call)")
    return fig


def latency_table(df):
    """A row per batch size, per implementation img/s and latency mean / p90 / p99 (ms), with detections
    per image (the work behind the number); None without finished inference runs."""
    import pandas as pd

    runs = df[(df["task"] == "infer") & (df["status"] == "ok")]
    if not len(runs):
        return None
    sizes = sorted({int(k) for lat in runs["latency"] for k in (lat or {})})
    table = {"Batch size": sizes}
    for _, run in runs.sort_values("impl").iterrows():
        lat = run["latency"] or {}
        cells = []
        for size in sizes:
            st = lat.get(str(size))
            cells.append(
                "-"
                if st is None
                else f"{st['images_per_s']:.2f} img/s, {st['latency_ms_mean']:.1f} / "
                f"{st['latency_ms_p90']:.1f} / {st['latency_ms_p99']:.1f} ms, "
                f"{st['detections_per_image']:.1f} det"
            )
        table[run["impl"]] = cells
    return pd.DataFrame(table)
