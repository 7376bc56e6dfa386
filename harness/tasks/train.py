"""``--task train``: the framework's own training loop with the timer hooked in; throughput over the
window [warmup, end) on the global batch, with the work, FLOPs and (``benchmark.phases``) the phases."""

from __future__ import annotations

from .base import RankContext, Task
from .rank import PartialIterations, Progress, native_dict, say, write_record


class Train(Task):
    name = "train"
    help = "train: throughput over the window"

    def run(self, rank: RankContext) -> None:
        timer, partial = self.train(rank)
        world_images = _global_images(timer, rank.dist)
        extra = self.after_training(rank)
        if rank.dist.rank == 0:
            record = _record(rank, timer, world_images, extra)
            partial.done()
            s, bench = record["summary"], rank.cfg.benchmark
            say(
                f"{rank.impl}: {s['images_per_s']:.3f} img/s over iterations [{bench.warmup}, {bench.end}), "
                f"median {s['s_per_iter_median']:.3f} s/iter"
            )

    def train(self, rank: RankContext):
        """The adapter's training under the timer (its listeners: the partial stream, progress): (timer,
        stream)."""
        from mrcnn_bench.harness.engine.timing import IterationTimer

        bench, dist = rank.cfg.benchmark, rank.dist
        partial = PartialIterations(rank.run_dir, dist.rank)
        progress = Progress(dist.rank, bench.iters, max(1, bench.iters // 20))
        timer = IterationTimer.for_device(
            bench.iters, dist.device, listeners=[partial, progress, *self.listeners(rank)]
        )
        try:
            rank.trained = rank.adapter.train(rank.cfg, rank.data, timer, dist, native=rank.native) or {}
        finally:
            timer.after_train()
        if len(timer.records) != bench.iters:
            raise RuntimeError(
                f"{rank.impl}: the adapter ran {len(timer.records)} iterations, {bench.iters} were asked for"
            )
        return timer, partial

    def listeners(self, rank: RankContext) -> list:
        """What else listens to the timer in this task (harness/engine/timing.TimerListener)."""
        return []

    def after_training(self, rank: RankContext) -> dict:
        """What the task adds to the summary once training has returned (every rank)."""
        return {}


def _global_images(timer, dist) -> list[int]:
    """The global batch of each iteration: every rank's own image count, summed."""
    import torch
    import torch.distributed as tdist

    images = torch.tensor([r.images for r in timer.records], dtype=torch.int64)
    if dist.distributed:
        images = images.to(dist.device) if dist.backend == "nccl" else images
        tdist.all_reduce(images)
    return images.cpu().tolist()


def _summary(rank: RankContext, rows: list[dict], timer, world_images: list[int]) -> dict:
    """The window's measures (harness/records/metrics.py): throughput, work per image, and the model FLOPs
    utilisation against the measured matmul peak of every process (calibrated here, with this process's
    threads, after the window); with benchmark.phases, ms per phase, what the framework lacks, its syncs."""
    from mrcnn_bench.harness.data.datasets import num_classes
    from mrcnn_bench.harness.engine.flops import (
        cached_unit_costs,
        matmul_peak_flops,
        window_flops_per_image,
        window_phase_flops,
    )
    from mrcnn_bench.harness.engine.phases import PhaseProbe, window_phases
    from mrcnn_bench.harness.records.metrics import Window, summarize

    cfg, dist = rank.cfg, rank.dist
    bench = cfg.benchmark
    costs = cached_unit_costs(cfg, num_classes(cfg, rank.data))
    flops = window_flops_per_image(costs, rows, bench.warmup, bench.end)
    peak = matmul_peak_flops(dist.device, bench.dtype)
    summary = summarize(Window(rows, bench.warmup, bench.end, world_images, dist.world_size, flops, peak))
    summary["matmul_peak_flops_per_process"] = peak
    for probe in timer.of_type(PhaseProbe):
        summary.update(
            phases_ms=window_phases(rows, bench.warmup, bench.end),
            phases_missing=probe.missing,
            phases_notes=probe.notes,
            host_syncs_per_step=probe.host_syncs,
            phases_flops=window_phase_flops(costs, rows, bench.warmup, bench.end),
        )
    return summary


def _record(rank: RankContext, timer, world_images: list[int], added: dict) -> dict:
    """Rank 0: iterations.jsonl and run.json, each written atomically; returns the record."""
    from mrcnn_bench.harness.records.results import atomic_write_jsonl

    bench = rank.cfg.benchmark
    rows = [r.to_dict() for r in timer.records]
    summary = {**_summary(rank, rows, timer, world_images), **added}
    atomic_write_jsonl(
        rank.run_dir / "iterations.jsonl", [dict(row, global_images=g) for row, g in zip(rows, world_images)]
    )
    extra = dict(rank.trained)
    native = native_dict(rank.native, extra)
    record = write_record(
        rank,
        dict(
            native_config=native,
            summary=summary,
            iterations_recorded=len(timer.records),
            window={"warmup": bench.warmup, "end": bench.end, "iters": bench.iters},
        ),
        extra={
            **({"adapter": extra} if extra else {}),
            # the canonical keys this framework ran otherwise, allowed by benchmark.allow_divergent
            "divergent": rank.adapter.divergences(rank.cfg),
        },
    )
    _mlperf_log(rank, record, rows)
    return record


def _mlperf_log(rank: RankContext, record: dict, rows: list[dict]) -> None:
    """mlperf.log beside run.json (records/mlperf.py, MLCommons' mllog); a log that cannot be written is
    said, and the run stands."""
    try:
        from mrcnn_bench.harness.records.mlperf import write_log

        write_log(rank.run_dir, record, rows)
    except Exception as e:  # noqa: BLE001 (an optional side file: the run's record is written)
        say(f"{rank.impl}: no mlperf.log: {type(e).__name__}: {e}")
