"""Where a loader's time goes: the split of ``--task data`` into read, decode, transform and collate (the
stages detectron2's ``data_advanced`` benchmark separates), then the copy to the device and what is left.

Each adapter names the calls of its framework's own loader that hold a stage (``Adapter.loader_stages``):
the per-image call (the dataset's ``__getitem__`` or mapper), the image decode, the collate. While the
split runs those calls are wrapped with a clock that keeps each call's *self* time — a call timed inside
another counts for its own stage only — and every ``open`` of a file under the image folder reads the
file whole into memory, timed as "read". So:

- read: the image files' bytes from the file system (the page cache as the run found it);
- decode: the framework's decode call, less the reads inside it;
- transform: the rest of the per-image call (target building, flip, and resize where the loader resizes
  on the host), less read and decode;
- collate: the collate call;
- to device: the loop's copy of the batch to the device (synchronised);
- other: the batch's wall time less all of these (sampler, the loader's own loop, batching).

It runs in the loader's main process (0 workers: with workers the calls run in other processes), on
batches after the first, over a fresh pipeline built with the wrappers in place.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

STAGES = (
    "read",
    "decode",
    "transform",
    "collate",
    "to_device",
    "other",
)  # the first four: the loader's own calls
# open()'s keywords at their defaults (iopath's PathManager passes them all): a plain read of the file
_OPEN_DEFAULTS = {
    "buffering": -1,
    "encoding": None,
    "errors": None,
    "newline": None,
    "closefd": True,
    "opener": None,
}


class StageSplitError(RuntimeError):
    """The loader did not make a call its adapter names for a stage: the split would be wrong."""


@dataclass(frozen=True)
class LoaderStages:
    """The calls of a framework's loader that hold a stage: each an (owner, name) that the loader looks up
    when it runs — a class (methods), a module (functions) or a dict (a registry's table)."""

    item: list[tuple]  # the per-image call: its self time is the "transform" stage
    decode: list[tuple]
    collate: list[tuple]
    transform: str  # what "transform" holds in this loader, and where the resize happens


class StageClock:
    """Self time and calls per stage."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner = [0.0]  # per open call: the time of the timed calls inside it

    def timed(self, stage: str, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            self._inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - t0
                self.seconds[stage] += total - self._inner.pop()
                self.calls[stage] += 1
                self._inner[-1] += total

        return call


def _patch(owner, name: str, replacement):
    if isinstance(owner, dict):
        return mock.patch.dict(owner, {name: replacement})
    return mock.patch.object(owner, name, replacement)


def _original(owner, name: str):
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


@contextlib.contextmanager
def timed_reads(image_dir: Path, clock: StageClock):
    """Every binary read-only ``open`` of a file under ``image_dir`` reads the file whole, timed as "read",
    and hands back its bytes as an in-memory file of the same name."""
    root = os.path.abspath(image_dir) + os.sep  # not resolved: an image may be a link to a file elsewhere
    real_open = builtins.open

    def read_whole(path):
        with real_open(path, "rb") as f:
            data = io.BytesIO(f.read())
        data.name = os.fspath(path)
        return data

    timed_read = clock.timed("read", read_whole)

    def open_(file, mode="r", *args, **kwargs):
        plain = (
            not args
            and all(kwargs.get(k, v) == v for k, v in _OPEN_DEFAULTS.items())
            and set(kwargs) <= set(_OPEN_DEFAULTS)
        )
        if (
            plain
            and isinstance(file, (str, os.PathLike))
            and set(mode) <= set("rb")
            and "b" in mode
            and os.path.abspath(file).startswith(root)
        ):
            return timed_read(file)
        return real_open(file, mode, *args, **kwargs)

    with mock.patch.object(builtins, "open", open_):
        yield


@contextlib.contextmanager
def stage_wrappers(stages: LoaderStages, clock: StageClock):
    with contextlib.ExitStack() as stack:
        for stage, targets in (
            ("transform", stages.item),
            ("decode", stages.decode),
            ("collate", stages.collate),
        ):
            for owner, name in targets:
                stack.enter_context(_patch(owner, name, clock.timed(stage, _original(owner, name))))
        yield


@dataclass
class StageSplit:
    images: int = 0
    batches: int = 0
    wall_s: float = 0.0
    to_device_s: float = 0.0
    seconds: dict = field(default_factory=dict)

    def ms_per_image(self) -> dict[str, float]:
        """STAGES in ms per image: the timed calls' self times, the copy to the device, the rest of the wall
        time."""
        known = {k: self.seconds.get(k, 0.0) for k in STAGES[:4]}
        known["to_device"] = self.to_device_s
        known["other"] = max(self.wall_s - sum(known.values()), 0.0)
        return {k: 1e3 * known[k] / self.images for k in STAGES}


def split_stages(adapter, cfg, data, dist, native, batches: int, sync=lambda: None) -> dict:
    """``batches`` batches of the adapter's own input pipeline, built anew with its stage calls wrapped; the
    first batch (start-up) is left out. Returns run.json's ``stages`` part: ms per image per stage, the
    batches and images it read, and what "transform" holds."""
    stages = adapter.loader_stages(native)
    clock = StageClock()
    split = StageSplit()
    with stage_wrappers(stages, clock), timed_reads(Path(data.train_images), clock):
        pipeline, to_device = adapter.input_pipeline(cfg, data, dist, native=native)
        next(pipeline)
        clock.reset()
        for _ in range(batches):
            t0 = time.perf_counter()
            batch = next(pipeline)
            t1 = time.perf_counter()
            split.images += to_device(batch)
            sync()
            t2 = time.perf_counter()
            split.batches += 1
            split.wall_s += t2 - t0
            split.to_device_s += t2 - t1
        split.seconds = dict(clock.seconds)
        calls = dict(clock.calls)
        del pipeline
    for stage in STAGES[:4]:
        if not calls.get(stage):
            raise StageSplitError(
                f"{adapter.name}: no call of its loader's {stage} stage ran in {batches} batches "
                f"(loader_stages names calls its loader does not make)"
            )
    return {
        "ms_per_image": split.ms_per_image(),
        "batches": split.batches,
        "images": split.images,
        "calls": {k: calls.get(k, 0) for k in STAGES[:4]},
        "transform_holds": stages.transform,
    }
