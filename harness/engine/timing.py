"""Per-iteration timing, as detectron2's IterationTimer hook measures it.

An adapter calls :meth:`IterationTimer.before_train` once, then :meth:`after_step` at the end of
every optimizer step (after the backward pass and ``optimizer.step()``), passing the images that
process consumed in that step. The timer synchronizes the device first where the device runs
asynchronously (CUDA), so a stamp means "the work of this iteration has finished".

Throughput over the window [warmup, end):
    images in iterations warmup .. end-1 (global batch, summed over processes)
    / (stamp at the end of iteration end-1 - stamp at the end of iteration warmup-1)
where the "end of iteration -1" is the stamp taken by ``before_train``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class IterationRecord:
    iter: int
    end_time: float  # seconds since before_train(), after device sync
    duration: float  # this iteration's wall time (from the previous stamp)
    images: int  # images this process consumed in the iteration
    data_time: float | None = None  # time spent waiting for the data loader, where exposed
    loss: float | None = None
    max_memory_mb: float | None = None  # peak device memory so far (CUDA) or peak RSS (CPU)
    lr: float | None = None
    # The work of the iteration on this process, counted from the shapes the model's own modules
    # see (no device synchronisation): padded input pixels into the backbone (images x H x W),
    # proposals out of the RPN, RoIs sampled for the box head, positive RoIs through the mask head,
    # and the RPN's sampled positive anchors (what its box loss is computed on).
    # None where an adapter does not count them.
    pixels: int | None = None
    proposals: int | None = None
    rois: int | None = None
    positives: int | None = None
    rpn_positives: int | None = None
    # With benchmark.phases (engine/phases.py): seconds per phase of this iteration, and the host-device
    # waits of the one step the sync counter saw.
    phases: dict | None = None
    host_syncs: int | None = None
    # seconds since the epoch at the stamp: where the launcher's telemetry samples meet the window
    wall_time: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


#: the work counters every adapter reports per iteration (IterationRecord fields)
WORK_COUNTERS = ("pixels", "proposals", "rois", "positives", "rpn_positives")


@dataclass
class WindowSummary:
    warmup: int
    end: int
    iterations: int  # in the window
    images: int  # global, in the window
    seconds: float
    images_per_s: float
    s_per_iter_median: float
    s_per_iter_mean: float
    s_per_iter_p10: float
    s_per_iter_p90: float
    data_time_share: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_window(
    records: list[IterationRecord],
    warmup: int,
    end: int,
    world_images: list[int] | None = None,
) -> WindowSummary:
    """Throughput and per-iteration statistics over iterations [warmup, end).

    ``records`` must hold iterations 0 .. end-1 in order. ``world_images[i]``, when given, is the
    number of images all processes together consumed in iteration i (the global batch); otherwise
    each record's own count is used.
    """
    if end <= warmup:
        raise ValueError(f"empty window [warmup={warmup}, end={end})")
    if len(records) < end:
        raise ValueError(f"window [{warmup}, {end}) needs {end} iterations, only {len(records)} recorded")
    for i, r in enumerate(records[:end]):
        if r.iter != i:
            raise ValueError(f"iteration records out of order: position {i} holds iteration {r.iter}")
    t0 = records[warmup - 1].end_time if warmup > 0 else 0.0  # end times count from before_train()
    t1 = records[end - 1].end_time
    seconds = t1 - t0
    if seconds <= 0:
        raise ValueError(f"non-positive window duration {seconds}")
    images = (
        sum(world_images[warmup:end])
        if world_images is not None
        else sum(r.images for r in records[warmup:end])
    )
    durations = sorted(r.duration for r in records[warmup:end])
    data_times = [r.data_time for r in records[warmup:end]]
    data_share = sum(data_times) / seconds if all(d is not None for d in data_times) else None
    return WindowSummary(
        warmup=warmup,
        end=end,
        iterations=end - warmup,
        images=images,
        seconds=seconds,
        images_per_s=images / seconds,
        s_per_iter_median=statistics.median(durations),
        s_per_iter_mean=sum(durations) / len(durations),
        s_per_iter_p10=_percentile(durations, 10),
        s_per_iter_p90=_percentile(durations, 90),
        data_time_share=data_share,
    )


def _cpu_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def raise_if_not_finite(loss: float, iteration: int, parts: dict | None = None) -> None:
    """FloatingPointError when the loss is NaN or infinite, naming the iteration and the loss's parts:
    a diverged run stops, the same way in every implementation."""
    if not math.isfinite(float(loss)):
        named = ", ".join(f"{k}={float(v):.4g}" for k, v in (parts or {}).items())
        raise FloatingPointError(
            f"loss became {float(loss)} at iteration {iteration}" + (f": {named}" if named else "")
        )


class TimerListener:
    """What an IterationTimer tells those listening to it (progress, the partial stream, the work
    counters, the phases): ``before_train`` when the clock starts, ``after_step`` with each iteration's
    record as it is made, ``after_train`` once training has returned (or failed). A listener that
    ``completes_record`` (work counts, phases) is told first and may add to the record; the others see
    it complete, in the order they started listening."""

    completes_record = False

    def before_train(self) -> None:
        pass

    def after_step(self, record: IterationRecord) -> None:
        pass

    def after_train(self) -> None:
        pass


class WorkCounts(TimerListener):
    """This iteration's work counters (``WORK_COUNTERS``), added to by hooks on the model's modules once
    per forward pass (micro-batches add up), put on the iteration's record and reset."""

    completes_record = True

    def __init__(self):
        self._work: dict[str, int] = {}

    def add(self, **work: int) -> None:
        for key, n in work.items():
            if key not in WORK_COUNTERS:
                raise KeyError(f"unknown work counter {key!r}; known: {', '.join(WORK_COUNTERS)}")
            self._work[key] = self._work.get(key, 0) + int(n)

    def before_train(self) -> None:
        self._work = {}

    def after_step(self, record: IterationRecord) -> None:
        for key, n in self._work.items():
            setattr(record, key, n)
        self._work = {}


class IterationTimer:
    """Stamps the end of each training iteration; see the module docstring for the arithmetic.

    ``sync`` is called before every stamp (``torch.cuda.synchronize`` on CUDA, nothing on CPU).
    ``listeners`` (TimerListener) are told of the start, of each record and of the end.
    """

    def __init__(
        self,
        total_iters: int,
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        memory: Callable[[], float] | None = None,
        listeners: list[TimerListener] = (),
    ):
        self.total_iters = total_iters
        self._sync = sync or (lambda: None)
        self._clock = clock
        self._memory = memory or _cpu_peak_rss_mb
        self.records: list[IterationRecord] = []
        self.work = WorkCounts()
        self.listeners: list[TimerListener] = []
        for listener in (self.work, *listeners):
            self.listen(listener)
        self._t0: float | None = None
        self._last: float | None = None

    def listen(self, listener: TimerListener) -> TimerListener:
        """Tell ``listener`` of this timer's events from now on (those that complete a record before the
        others)."""
        at = (
            sum(1 for other in self.listeners if other.completes_record)
            if listener.completes_record
            else len(self.listeners)
        )
        self.listeners.insert(at, listener)
        return listener

    def of_type(self, kind: type) -> list:
        """The listeners of one kind (e.g. the phase probe a run attached)."""
        return [other for other in self.listeners if isinstance(other, kind)]

    @classmethod
    def for_device(cls, total_iters: int, device: str, **kwargs) -> IterationTimer:
        if device.startswith("cuda"):
            import torch

            return cls(
                total_iters,
                sync=torch.cuda.synchronize,
                memory=lambda: torch.cuda.max_memory_allocated() / 2**20,
                **kwargs,
            )
        return cls(total_iters, **kwargs)

    @property
    def next_iter(self) -> int:
        return len(self.records)

    def before_train(self) -> None:
        self._sync()
        self._t0 = self._last = self._clock()
        for listener in self.listeners:
            listener.before_train()

    def count(self, **work: int) -> None:
        """Add to this iteration's work counters (``WORK_COUNTERS``); called from hooks on the model's
        modules, once per forward pass (micro-batches add up)."""
        self.work.add(**work)

    def after_train(self) -> None:
        """Training has returned or failed: each listener lets go of what it holds (hooks, files)."""
        for listener in self.listeners:
            listener.after_train()

    def after_step(
        self,
        images: int,
        loss: float | None = None,
        data_time: float | None = None,
        lr: float | None = None,
        loss_parts: dict | None = None,
    ) -> IterationRecord:
        """Stamp the end of an optimizer step. A loss that is NaN or infinite stops the run here, for
        every implementation alike (``loss_parts``, the named losses, go into the message)."""
        if self._t0 is None:
            raise RuntimeError("IterationTimer.before_train() was not called")
        if loss is not None:
            raise_if_not_finite(loss, len(self.records), loss_parts)
        self._sync()
        now = self._clock()
        rec = IterationRecord(
            iter=len(self.records),
            end_time=now - self._t0,
            duration=now - self._last,
            images=int(images),
            data_time=data_time,
            loss=None if loss is None else float(loss),
            max_memory_mb=self._memory(),
            lr=lr,
            wall_time=time.time(),
        )
        self._last = now
        for listener in self.listeners:
            if listener.completes_record:
                listener.after_step(rec)
        self.records.append(rec)
        for listener in self.listeners:
            if not listener.completes_record:
                listener.after_step(rec)
        return rec

    def summary(self, warmup: int, end: int, world_images: list[int] | None = None) -> WindowSummary:
        return summarize_window(self.records, warmup, end, world_images)


def work_per_image(records: list[dict], warmup: int, end: int) -> dict[str, float | None]:
    """Each work counter per image over the window [warmup, end), from iteration rows (one process's
    counts over that process's images); None for a counter some iteration lacks."""
    window = [r for r in records if warmup <= r["iter"] < end]
    images = sum(r["images"] for r in window)
    out = {}
    for key in WORK_COUNTERS:
        counts = [r.get(key) for r in window]
        out[f"{key}_per_image"] = (sum(counts) / images) if window and images and None not in counts else None
    return out
