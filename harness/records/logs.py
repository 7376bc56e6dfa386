"""Training logs of other systems, read into one shape: how many seconds the run had spent when it had
completed k iterations, at the iterations the log speaks of (``Trace``).

Each system prints its time differently, and each parser says how it turned that into seconds:

- ``maskrcnn-benchmark`` (and NVIDIA's Mask R-CNN, its descendant): ``iter: 20 ... time: 0.2002 (0.3765)``
  every 20 iterations; the number in brackets is the running average over every iteration so far, so
  completed k iterations took average x k seconds (4 decimals printed: ±0.00005 s x k).
- ``detectron``: ``json_stats: {"iter": 20, "time": ...}`` every 20 iterations (``iter`` counts from 0);
  ``time`` is the average since the timer was reset after iteration 20, so iteration i completed
  (i - 20) x time seconds after iteration 20 did.
- ``tensorpack``: ``Epoch 3 (global_step 300) finished, time:1 minute 2 seconds.`` per epoch (seconds
  printed whole past a minute); its progress-bar lines ``45/100[00:27<...`` only show how far a run got.
- ``speedometer`` (SimpleDet, MXNet): ``Epoch[0] Batch [20]\tSpeed: 12.34 samples/sec`` every ``frequent``
  batches: the mean speed since the previous line, so that interval took frequent x batch / speed seconds.
- ``keras`` (matterport's Mask_RCNN): ``100/100 [====] - 51s 512ms/step - loss: ...`` per epoch (the
  per-step time x steps, 1 ms resolution); ``ETA`` progress lines only show how far a run got.

A line that should parse and does not stops with the file and line number. Lines of several ranks
interleaved in one log (``srun --label``'s ``3: `` prefixes, or the same iteration printed twice) keep
rank 0's (or the first) and say how many were dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class LogError(ValueError):
    """A log that cannot be read: the message names the file and, where there is one, the line."""


@dataclass
class Trace:
    """Seconds spent at completed-iteration counts, and how they were obtained."""

    path: str
    format: str
    points: dict[int, float] = field(
        default_factory=dict
    )  # completed iterations -> seconds (any fixed origin)
    last_iteration: int = 0  # the furthest the log shows the run got, timed or not
    derivation: str = ""
    notes: list[str] = field(default_factory=list)
    other_ranks: int = 0  # lines of ranks other than 0, dropped
    repeated: int = 0  # lines of an iteration already kept, dropped

    def keep(self, k: int, seconds: float, rank: int | None) -> None:
        """Record a point once: rank 0's where ranks are labelled, else the first printed."""
        if rank not in (None, 0):
            self.other_ranks += 1
        elif k in self.points:
            self.repeated += 1
        else:
            self.points[k] = seconds

    def finish(self) -> Trace:
        """The notes on the lines dropped; the trace."""
        if self.other_ranks:
            self.notes.append(f"{self.other_ranks} line(s) of other ranks dropped (rank 0's kept)")
        if self.repeated:
            self.notes.append(
                f"{self.repeated} repeated iteration line(s) dropped (interleaved ranks? the first kept)"
            )
        return self

    def window_seconds(self, warmup: int, end: int) -> tuple[int, int, float]:
        """The seconds of iterations [a, b): a the first timed point from ``warmup`` on, b the last
        within the window's length after it (a log whose lines fall one iteration off the window's
        ends gives a window as long, shifted). Returns (a, b, seconds); raises LogError when the log
        does not cover the window."""
        if not self.points:
            raise LogError(f"{self.path}: no timed iteration found in a {self.format} log")
        marks = sorted(self.points)
        starts = [k for k in marks if k >= warmup]
        ends = [k for k in marks if k <= (starts[0] if starts else warmup) + end - warmup]
        if not starts or not ends or ends[-1] - starts[0] != end - warmup:
            raise LogError(
                f"{self.path}: the log's timed iterations ({marks[0]}..{marks[-1]}, the run got to "
                f"{self.last_iteration}) do not cover the window [{warmup}, {end})"
                + ("; truncated?" if self.last_iteration < end else "")
            )
        a, b = starts[0], ends[-1]
        return a, b, self.points[b] - self.points[a]

    def per_iteration(self, a: int, b: int) -> list[tuple[int, float]]:
        """(iteration, seconds) for each iteration of [a, b): the mean of the logged interval it lies in."""
        marks = [k for k in sorted(self.points) if a <= k <= b]
        rows = []
        for lo, hi in zip(marks, marks[1:]):
            mean = (self.points[hi] - self.points[lo]) / (hi - lo)
            rows += [(i, mean) for i in range(lo, hi)]
        return rows


_RANK = re.compile(r"^\s*(?:\[(?:rank)?\s*(\d+)\]|(\d+)):\s?")


def _lines(path: Path):
    """(line number, text without a rank prefix, rank or None) of a log; carriage returns and backspaces
    (progress bars) split lines too."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LogError(f"{path}: no such log file") from None
    text = raw.decode("utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), 1):
        for part in re.split(r"[\r\x08]+", line):
            m = _RANK.match(part)
            rank = int(m.group(1) or m.group(2)) if m else None
            yield number, part[m.end() :] if m else part, rank


# ------------------------------------------------------------------------- maskrcnn-benchmark
_MRB_ITER = re.compile(r"\biter:\s*(\d+)\b")
_MRB_TIME = re.compile(r"\btime:\s*([0-9.]+)\s*\(\s*([0-9.]+)\s*\)")


def parse_maskrcnn_benchmark(path: str | Path) -> Trace:
    path = Path(path)
    trace = Trace(
        str(path),
        "maskrcnn-benchmark",
        derivation=(
            "running average of the iteration time (the bracketed number, 4 decimals) x iterations completed"
        ),
    )
    for number, line, rank in _lines(path):
        m = _MRB_ITER.search(line)
        if not m or "eta:" not in line:
            continue
        t = _MRB_TIME.search(line)
        if not t:
            raise LogError(
                f"{path}:{number}: an iteration line without 'time: <median> (<average>)': "
                f"{line.strip()[:120]!r}"
            )
        k, average = int(m.group(1)), float(t.group(2))
        trace.last_iteration = max(trace.last_iteration, k)
        trace.keep(k, average * k, rank)
    return trace.finish()


# ---------------------------------------------------------------------------------- Detectron
_DETECTRON_RESET = 20  # the iteration after which Detectron's train loop resets its timer


def parse_detectron(path: str | Path) -> Trace:
    path = Path(path)
    trace = Trace(
        str(path),
        "detectron",
        derivation=(
            f"json_stats' average iteration time since the reset after iteration {_DETECTRON_RESET} x "
            "iterations since"
        ),
    )
    for number, line, rank in _lines(path):
        if "json_stats:" not in line:
            continue
        body = line.split("json_stats:", 1)[1].strip()
        try:
            stats = json.loads(body)
            it, average = int(stats["iter"]), float(stats["time"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LogError(
                f"{path}:{number}: json_stats line is not JSON with 'iter' and 'time' ({type(e).__name__}: "
                f"{e})"
            ) from None
        trace.last_iteration = max(trace.last_iteration, it + 1)
        if it > _DETECTRON_RESET:  # iterations it+1 completed; the average covers iterations 21..it
            trace.keep(it + 1, average * (it - _DETECTRON_RESET), rank)
    return trace.finish()


# --------------------------------------------------------------------------------- tensorpack
_TP_EPOCH = re.compile(r"Epoch (\d+) \(global_step (\d+)\) finished, time:\s*(.+?)\.?\s*$")
_TP_STEP = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
_UNITS = {"day": 86400.0, "hour": 3600.0, "minute": 60.0, "second": 1.0}


def humanized_seconds(text: str) -> float:
    """tensorpack's humanize_time_delta read back: '1 hour 2 minutes 3 seconds', '52.3 seconds'."""
    parts = re.findall(r"([0-9.]+(?:e[-+]?\d+)?)\s*(day|hour|minute|second)s?", text)
    if not parts or re.sub(r"[0-9.]+(?:e[-+]?\d+)?\s*(day|hour|minute|second)s?", "", text).strip():
        raise ValueError(f"not a tensorpack duration: {text!r}")
    return sum(float(v) * _UNITS[u] for v, u in parts)


def parse_tensorpack(path: str | Path) -> Trace:
    path = Path(path)
    trace = Trace(
        str(path),
        "tensorpack",
        derivation="the epochs' times as printed (whole seconds past a minute), summed",
    )
    total, epoch_steps = 0.0, None
    for number, line, rank in _lines(path):
        m = _TP_EPOCH.search(line)
        if m:
            step = int(m.group(2))
            try:
                seconds = humanized_seconds(m.group(3))
            except ValueError as e:
                raise LogError(f"{path}:{number}: {e}") from None
            if rank in (None, 0) and step not in trace.points:
                if not trace.points:
                    epoch_steps = step // int(m.group(1)) if int(m.group(1)) else step
                    trace.points[step - epoch_steps] = 0.0
                total += seconds
            trace.keep(step, total, rank)
            trace.last_iteration = max(trace.last_iteration, step)
            continue
        s = _TP_STEP.search(line)
        if s and trace.points:
            trace.last_iteration = max(trace.last_iteration, max(trace.points) + int(s.group(1)))
    return trace.finish()


# ------------------------------------------------------------------- SimpleDet / MXNet Speedometer
_SPEEDO = re.compile(r"Epoch\[(\d+)\]\s*(?:Rank\[\d+\]\s*)?Batch\s*\[(\d+)\]")
_SPEED = re.compile(r"Speed:\s*([0-9.]+)\s*samples/sec")
_ITER = re.compile(r"Iter:\s*(\d+)/(\d+)")


def parse_speedometer(path: str | Path, images_per_iteration: int) -> Trace:
    path = Path(path)
    trace = Trace(
        str(path),
        "speedometer",
        derivation=(
            "each line's speed is the mean since the line before: that interval took batches x "
            f"{images_per_iteration} "
            "images / speed seconds"
        ),
    )
    total, completed, last = 0.0, 0, None  # last: (epoch, batch) of the previous line
    for number, line, rank in _lines(path):
        m = _SPEEDO.search(line)
        if not m:
            continue
        speed = _SPEED.search(line)
        if not speed:
            raise LogError(
                f"{path}:{number}: a Speedometer line without 'Speed: <n> samples/sec': "
                f"{line.strip()[:120]!r}"
            )
        if rank not in (None, 0):
            trace.keep(-1, 0.0, rank)
            continue
        epoch, batch, value = int(m.group(1)), int(m.group(2)), float(speed.group(1))
        if value <= 0:
            raise LogError(f"{path}:{number}: speed {value} samples/sec")
        if last == (epoch, batch):
            trace.keep(completed, total, None)  # the same line again: counted as repeated
            continue
        batches = batch - last[1] if last and last[0] == epoch else batch
        it = _ITER.search(line)
        end = int(it.group(1)) if it else completed + batches
        if not trace.points:
            trace.points[end - batches] = 0.0  # the first line's interval began where it says
        completed = end
        total += batches * images_per_iteration / value
        trace.points[completed] = total
        trace.last_iteration = completed
        last = (epoch, batch)
    return trace.finish()


# ------------------------------------------------------------------------------------- Keras
_KERAS_EPOCH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s*$")
_KERAS_END = re.compile(r"^\s*(\d+)/(\d+) \[=+\] - (\d+)s(?: ([0-9.]+)(s|ms|us)/step)?")
_KERAS_ETA = re.compile(r"^\s*(\d+)/(\d+) \[[=>.]*\] - ETA:")
_STEP_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_keras(path: str | Path) -> Trace:
    path = Path(path)
    trace = Trace(
        str(path), "keras", derivation="each epoch's time per step (1 ms resolution) x its steps, summed"
    )
    total, epoch, done = 0.0, None, 0
    for number, line, rank in _lines(path):
        if rank not in (None, 0):
            trace.keep(-1, 0.0, rank)
            continue
        m = _KERAS_EPOCH.match(line)
        if m:
            epoch = int(m.group(1))
            continue
        end = _KERAS_END.match(line)
        if end:
            if epoch is None:
                raise LogError(f"{path}:{number}: an epoch's end before any 'Epoch N/M' line")
            steps, whole = int(end.group(2)), float(end.group(3))
            seconds = float(end.group(4)) * _STEP_UNIT[end.group(5)] * steps if end.group(4) else whole
            if not trace.points:
                trace.points[(epoch - 1) * steps] = 0.0
            total += seconds
            done = epoch * steps
            trace.keep(done, total, None)
            trace.last_iteration = max(trace.last_iteration, done)
            continue
        eta = _KERAS_ETA.match(line)
        if eta and epoch is not None:
            trace.last_iteration = max(
                trace.last_iteration, (epoch - 1) * int(eta.group(2)) + int(eta.group(1))
            )
    return trace.finish()


FORMATS = {
    "maskrcnn-benchmark": parse_maskrcnn_benchmark,
    "detectron": parse_detectron,
    "tensorpack": parse_tensorpack,
    "speedometer": parse_speedometer,
    "keras": parse_keras,
}


def parse(fmt: str, path: str | Path, images_per_iteration: int) -> Trace:
    if fmt not in FORMATS:
        raise LogError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "speedometer":
        return parse_speedometer(path, images_per_iteration)
    return FORMATS[fmt](path)
