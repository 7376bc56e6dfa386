"""The measures of a training run, each declared once: its name (the key in run.json's summary and the
column of the runs frame), its unit, how it is computed from the run's iterations, and how a table
shows it. The worker computes the summary from these declarations, the runs frame reads its columns
from them and the report formats them through them: a new measure is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..engine.timing import WORK_COUNTERS, summarize_window, work_per_image


@dataclass(frozen=True)
class Window:
    """What a measure is computed from: this process's iterations (rows of iterations.jsonl), the timed
    window [warmup, end), the global batch of each iteration, and the model FLOPs' unit costs."""

    rows: list[dict]
    warmup: int
    end: int
    world_images: list[int]
    world_size: int
    flops_per_image: float | None = None  # harness/engine/flops.py, from the rows' pixels, RoIs and positives
    peak_flops: float | None = None  # the measured matmul peak of one process

    @cached_property
    def timing(self) -> dict:
        """summarize_window's numbers (timing.py): img/s on the global batch, iteration-time statistics."""
        return summarize_window(_records(self.rows), self.warmup, self.end, self.world_images).to_dict()

    @cached_property
    def work(self) -> dict:
        return work_per_image(self.rows, self.warmup, self.end)


def _records(rows: list[dict]):
    from ..engine.timing import IterationRecord

    fields = IterationRecord.__dataclass_fields__
    return [IterationRecord(**{k: v for k, v in r.items() if k in fields}) for r in rows]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    how: str  # how it is computed, in words
    compute: Callable[[Window], Any] | None  # None: read at report time from the iterations (``read``)
    fmt: str = ".3f"
    scale: float = 1.0  # shown as value x scale
    suffix: str = ""
    zero_is_missing: bool = False  # a 0 means "not measured" (shown "-")
    read: Callable[[dict, list[dict]], Any] | None = (
        None  # (summary, iterations) -> value; default summary[name]
    )

    def value(self, summary: dict, iterations: list[dict]) -> Any:
        return self.read(summary, iterations) if self.read else summary.get(self.name)

    def show(self, value) -> str:
        if (
            value is None
            or (isinstance(value, float) and math.isnan(value))
            or (self.zero_is_missing and not value)
        ):
            return "-"
        return format(value * self.scale, self.fmt) + self.suffix


def _timing(key: str):
    return lambda w: w.timing[key]


def _work(counter: str):
    return lambda w: w.work[f"{counter}_per_image"]


def _mfu(w: Window) -> float | None:
    images_per_s = w.timing["images_per_s"]
    return (
        w.flops_per_image * images_per_s / (w.peak_flops * w.world_size)
        if w.flops_per_image and w.peak_flops
        else None
    )


def _peak_memory(summary: dict, iterations: list[dict]) -> float | None:
    peaks = [it["max_memory_mb"] for it in iterations if it.get("max_memory_mb") is not None]
    return max(peaks) if peaks else None


_WORK_WORDS = {
    "pixels": "padded input pixels",
    "proposals": "RPN proposals",
    "rois": "RoIs sampled for the box head",
    "positives": "positive RoIs through the mask head",
    "rpn_positives": "the RPN's sampled positive anchors",
}
METRICS = [
    Metric(
        "images_per_s",
        "img/s",
        "global images in iterations [warmup, end) over the seconds between the stamps "
        "closing iterations warmup-1 and end-1",
        _timing("images_per_s"),
    ),
    Metric(
        "s_per_iter_median",
        "s",
        "median of the window's iteration times",
        _timing("s_per_iter_median"),
        ".4f",
    ),
    Metric("s_per_iter_mean", "s", "mean of the window's iteration times", _timing("s_per_iter_mean"), ".4f"),
    Metric(
        "s_per_iter_p10", "s", "10th percentile of the window's iteration times", _timing("s_per_iter_p10")
    ),
    Metric(
        "s_per_iter_p90", "s", "90th percentile of the window's iteration times", _timing("s_per_iter_p90")
    ),
    Metric(
        "data_time_share",
        "%",
        "the window's data-loader waits over its seconds",
        _timing("data_time_share"),
        ".1f",
        100,
        "%",
    ),
    *[
        Metric(
            f"{c}_per_image",
            "per image",
            f"{_WORK_WORDS[c]} in the window over its images (this process)",
            _work(c),
            ".0f" if c in ("proposals", "rois", "pixels") else ".1f",
        )
        for c in WORK_COUNTERS
    ],
    Metric(
        "flops_per_image",
        "GFLOP",
        "model FLOPs of the window's pixels, RoIs and positives over its images",
        lambda w: w.flops_per_image,
        ".1f",
        1e-9,
        zero_is_missing=True,
    ),
    Metric(
        "mfu",
        "%",
        "FLOPs per image x img/s over the matmul peak of every process",
        _mfu,
        ".2f",
        100,
        "%",
        zero_is_missing=True,
    ),
    Metric(
        "peak_memory_mb",
        "MB",
        "the largest peak memory any iteration recorded (CUDA allocator, or RSS on the CPU)",
        None,
        ".0f",
        read=_peak_memory,
    ),
]


def _telemetry(key: str):
    """A measure of the machine over the window: the launcher's telemetry (harness/machine/telemetry.py)."""
    return lambda summary, iterations: (summary.get("telemetry") or {}).get(key)


_MACHINE = [  # (key, unit, how, format, scale, suffix)
    (
        "j_per_image",
        "J/img",
        "the measured energy (GPU from NVML's counter, CPU package from RAPL) over the window's images",
        ".2f",
        1.0,
        "",
    ),
    (
        "images_per_s_per_w",
        "img/s/W",
        "img/s over the mean power of the measured parts (images per joule)",
        ".3f",
        1.0,
        "",
    ),
    ("gpu_util_mean", "%", "NVML's GPU utilisation, the mean of the window's samples", ".0f", 1.0, "%"),
    ("sm_mhz_mean", "MHz", "NVML's SM clock, the mean of the window's samples", ".0f", 1.0, ""),
    (
        "gpu_power_w_mean",
        "W",
        "NVML's power draw of the run's GPUs, the mean of the window's samples",
        ".0f",
        1.0,
        "",
    ),
    ("throttle_share", "%", "the window's samples with a GPU slowed by heat or power", ".0f", 100, "%"),
    (
        "cpu_util_mean",
        "%",
        "psutil's CPU utilisation over all cores, the mean of the window's samples",
        ".0f",
        1.0,
        "%",
    ),
    ("cpu_mhz_mean", "MHz", "psutil's CPU frequency, the mean of the window's samples", ".0f", 1.0, ""),
    (
        "others_cpu_share",
        "%",
        "the machine's busy CPU time less the run's own, over cores x seconds",
        ".0f",
        100,
        "%",
    ),
    (
        "usd_per_1000_images",
        "USD",
        "benchmark.price_per_hour x the window's seconds over its images, x 1000",
        ".4f",
        1.0,
        "",
    ),
]
METRICS += [
    Metric(key, unit, how, None, fmt, scale, suffix, read=_telemetry(key))
    for key, unit, how, fmt, scale, suffix in _MACHINE
]
MACHINE_METRICS = [key for key, *_ in _MACHINE]
BY_NAME = {m.name: m for m in METRICS}


def summarize(window: Window) -> dict:
    """run.json's summary of a training run: the window's own numbers, then every measure computed here."""
    timing = window.timing
    out = {k: timing[k] for k in ("warmup", "end", "iterations", "images", "seconds")}
    out.update({m.name: m.compute(window) for m in METRICS if m.compute is not None})
    return out


def show(name: str, value) -> str:
    return BY_NAME[name].show(value)
