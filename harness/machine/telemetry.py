"""What the machine did while a run ran: sampled in a thread of the launching process (never in the timed
one), every implementation alike, into ``telemetry.jsonl`` beside ``iterations.jsonl``; then, over the
run's timed window, energy per image, img/s per watt, utilisation and clocks, throttling, other work.

- GPUs through NVML (nvidia-ml-py's ``pynvml``): utilisation, SM and memory clocks, power, the cumulative
  energy counter, temperature, the clock-event (throttle) reasons, memory used, the compute processes.
- The CPU through psutil: per-core utilisation and frequency, the load average, the busy CPU seconds of
  the machine and of the run's process tree; RAPL package energy from ``/sys/class/powercap`` where
  readable.

A part that cannot be measured (no NVML, no RAPL, a sampling period out of range) is left out with the
reason, in ``summary.telemetry_missing``; the run goes on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .nvml import THROTTLE_BITS, _try, nvml_or_reason, throttle_reasons

PERIOD_RANGE = (0.01, 10.0)  # seconds between samples
NOISY_SHARE = 0.05  # a throttle or another process in more than this share of the window's samples: noisy
OTHERS_CPU_SHARE = 0.10  # other processes busy on more than this share of the machine's CPU time: noisy
MIN_SAMPLES = 3  # samples inside the window below which the others' CPU share is not judged
RAPL = Path("/sys/class/powercap")


def gpu_sample(nvml, handles: list, own_pids: set[int], own_per_gpu: int) -> list[dict]:
    """One sample per GPU. ``other_processes``: compute processes on it that are not the run's own (by pid;
    where none of its pids is the run's, as in a container with its own pid namespace, by count against
    ``own_per_gpu``)."""
    out = []
    for index, h in handles:
        util = _try(nvml.nvmlDeviceGetUtilizationRates, h)
        memory = _try(nvml.nvmlDeviceGetMemoryInfo, h)
        procs = _try(nvml.nvmlDeviceGetComputeRunningProcesses, h, default=[]) or []
        pids = [p.pid for p in procs]
        mine = [p for p in pids if p in own_pids]
        others = [p for p in pids if p not in own_pids] if mine else pids[own_per_gpu:]
        power = _try(nvml.nvmlDeviceGetPowerUsage, h)
        out.append(
            {
                "index": index,
                "util": util.gpu if util else None,
                "memory_util": util.memory if util else None,
                "sm_mhz": _try(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
                "memory_mhz": _try(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
                "power_w": power / 1e3 if power is not None else None,
                "energy_mj": _try(nvml.nvmlDeviceGetTotalEnergyConsumption, h),
                "temperature_c": _try(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
                "throttle": throttle_reasons(nvml, h),
                "memory_used_mb": memory.used / 2**20 if memory else None,
                "other_processes": others,
            }
        )
    return out


def rapl_domains() -> tuple[dict[str, Path], str | None]:
    """The package domains' energy counters, or why there are none."""
    if not RAPL.is_dir():
        return {}, f"CPU energy: no {RAPL} (RAPL) on this machine"
    found = {}
    for zone in sorted(RAPL.glob("intel-rapl:*")):
        name = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
        if name.startswith("package") and ":" not in zone.name.split("intel-rapl:", 1)[1]:
            found[name] = zone / "energy_uj"
    if not found:
        return {}, f"CPU energy: no package domain under {RAPL}"
    try:
        for path in found.values():
            int(path.read_text())
    except OSError as e:
        return {}, f"CPU energy: {e.filename} is not readable ({e.strerror}; root only since Linux 5.10)"
    return found, None


def _tree(pid: int):
    import psutil

    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_sample(pid: int | None, rapl: dict[str, Path]) -> dict:
    import psutil

    own = 0.0
    for p in [
        psutil.Process(),
        *(_tree(pid) if pid else []),
    ]:  # this launcher (its sampling too) and the run's processes
        try:
            t = (
                p.cpu_times()
            )  # with the children it has reaped (a loader worker that ended): own CPU never drops
            own += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    times = psutil.cpu_times()
    freq = psutil.cpu_freq(percpu=True) or []
    sample = {
        "cpu_util": psutil.cpu_percent(percpu=True),
        "cpu_mhz": [f.current for f in freq] or None,
        "load1": os.getloadavg()[0],
        # the machine's busy CPU seconds (a hypervisor's steal included: another guest's work); guest time is
        # in user
        "busy_cpu_s": times.user
        + times.nice
        + times.system
        + sum(getattr(times, k, 0.0) for k in ("irq", "softirq", "steal")),
        "own_cpu_s": own,
    }
    if rapl:
        sample["rapl_uj"] = {name: int(path.read_text()) for name, path in rapl.items()}
    return sample


@dataclass
class Sampler:
    """Samples every ``period_s`` in a thread, from ``start()`` to ``stop()``, into ``path`` (rows written
    to ``<path>.part`` as they come, renamed at the end)."""

    path: Path
    period_s: float
    gpus: list[int] | None  # NVML indices to sample; None: no GPU part
    own_per_gpu: int = 1
    missing: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mrcnn-bench telemetry", daemon=True)
        self.rapl, why = rapl_domains()
        if why:
            self.missing["cpu_energy"] = why
        self.nvml, self.handles = None, []
        if self.gpus is not None:
            self.nvml, why = nvml_or_reason()
            if why:
                self.missing["gpu"] = why
            else:
                count = self.nvml.nvmlDeviceGetCount()
                self.handles = [
                    (i, self.nvml.nvmlDeviceGetHandleByIndex(i))
                    for i in (self.gpus or range(count))
                    if i < count
                ]

    def start(self, pid: int) -> None:
        import psutil

        self.pid = pid
        psutil.cpu_percent(percpu=True)  # the first call starts psutil's interval
        self._file = open(self.path.with_name(self.path.name + ".part"), "w")
        self._thread.start()

    def _sample(self) -> dict:
        row = {"t": time.time(), **cpu_sample(self.pid, self.rapl)}
        if self.handles:
            own = {p.pid for p in _tree(self.pid)} if self.pid else set()
            row["gpus"] = gpu_sample(self.nvml, self.handles, own, self.own_per_gpu)
        return row

    def _loop(self) -> None:
        while True:
            row = self._sample()
            self.rows.append(row)
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> list[dict]:
        if not self._thread.is_alive():
            return self.rows
        self._stop.set()
        self._thread.join()
        self._file.close()
        os.replace(self._file.name, self.path)
        if self.nvml is not None:
            _try(self.nvml.nvmlShutdown)
        return self.rows


def _at(rows: list[dict], t: float, value) -> float | None:
    """A cumulative counter (``value(row)``) at time ``t``, interpolated between the samples around it;
    None where the samples do not cover ``t`` or a sample lacks it."""
    before = [r for r in rows if r["t"] <= t]
    after = [r for r in rows if r["t"] >= t]
    if not before or not after:
        return None
    a, b = before[-1], after[0]
    va, vb = value(a), value(b)
    if va is None or vb is None:
        return None
    return va if b["t"] == a["t"] else va + (vb - va) * (t - a["t"]) / (b["t"] - a["t"])


def _stats(values: list[float], name: str) -> dict:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {
        f"{name}_mean": float(np.mean(values)),
        f"{name}_p10": float(np.percentile(values, 10)),
        f"{name}_p90": float(np.percentile(values, 90)),
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def window_telemetry(
    rows: list[dict],
    t0: float,
    t1: float,
    images: int,
    cores: int,
    *,
    price_per_hour: float | None = None,
    gpus: bool = True,
) -> dict:
    """The window [t0, t1] (seconds since the epoch) of the samples: energy (GPU from NVML's counter, CPU from
    RAPL; each interpolated at the window's ends), J per image and img/s per W over what was measured,
    utilisation and clocks (mean, p10, p90 of the samples inside), the share of samples with a heat or
    power throttle or another process on a GPU, the other processes' share of the machine's CPU, and the
    cost of 1000 images at ``price_per_hour``."""
    inside = [r for r in rows if t0 <= r["t"] <= t1]
    seconds = t1 - t0
    out: dict = {"samples": len(inside), "seconds": seconds}
    n_gpus = len(rows[0].get("gpus", [])) if rows and gpus else 0
    energy = {}
    if n_gpus:
        ends = [
            [_at(rows, t, lambda r, k=k: r["gpus"][k]["energy_mj"]) for k in range(n_gpus)] for t in (t0, t1)
        ]
        if None not in ends[0] + ends[1]:
            energy["gpu"] = sum(b - a for a, b in zip(*ends)) / 1e3
        per_sample = [r["gpus"] for r in inside]
        out.update(_stats([_mean(g["util"] for g in s) for s in per_sample], "gpu_util"))
        out.update(_stats([_mean(g["sm_mhz"] for g in s) for s in per_sample], "sm_mhz"))
        out.update(_stats([_mean(g["memory_mhz"] for g in s) for s in per_sample], "memory_mhz"))
        out.update(_stats([sum(g["power_w"] or 0.0 for g in s) for s in per_sample], "gpu_power_w"))
        out["temperature_c_max"] = max(
            (g["temperature_c"] for s in per_sample for g in s if g["temperature_c"] is not None),
            default=None,
        )
        mask = sum(THROTTLE_BITS.values())
        throttled = [any((g["throttle"] or 0) & mask for g in s) for s in per_sample]
        others = [any(g["other_processes"] for g in s) for s in per_sample]
        out["throttle_share"] = sum(throttled) / len(per_sample) if per_sample else None
        out["throttle_reasons"] = sorted(
            {
                name
                for s in per_sample
                for g in s
                for name, bit in THROTTLE_BITS.items()
                if (g["throttle"] or 0) & bit
            }
        )
        out["other_gpu_process_share"] = sum(others) / len(per_sample) if per_sample else None
        out["other_gpu_processes"] = sorted({p for s in per_sample for g in s for p in g["other_processes"]})
    if rows and "rapl_uj" in rows[0]:
        names = list(rows[0]["rapl_uj"])
        ends = [[_at(rows, t, lambda r, k=k: r["rapl_uj"][k]) for k in names] for t in (t0, t1)]
        if None not in ends[0] + ends[1] and all(
            b >= a for a, b in zip(*ends)
        ):  # a counter that wrapped: not measured
            energy["cpu"] = sum(b - a for a, b in zip(*ends)) / 1e6
    out.update(_stats([_mean(r["cpu_util"]) for r in inside], "cpu_util"))
    out.update(_stats([_mean(r["cpu_mhz"] or []) for r in inside], "cpu_mhz"))
    out["load1_max"] = max((r["load1"] for r in inside), default=None)
    busy = [_at(rows, t, lambda r: r["busy_cpu_s"]) for t in (t0, t1)]
    own = [_at(rows, t, lambda r: r["own_cpu_s"]) for t in (t0, t1)]
    # a window of fewer samples than MIN_SAMPLES is read off samples mostly outside it: no verdict on others'
    # CPU
    if None not in busy + own and seconds > 0 and len(inside) >= MIN_SAMPLES:
        out["others_cpu_share"] = max(0.0, (busy[1] - busy[0]) - (own[1] - own[0])) / (cores * seconds)
    for part, joules in energy.items():
        out[f"{part}_energy_j"] = joules
    if energy and images:
        total = sum(energy.values())
        out["energy_parts"] = sorted(energy)
        out["j_per_image"] = total / images
        out["images_per_s_per_w"] = images / total if total > 0 else None  # (img/s) / (J/s)
    if price_per_hour is not None and images:
        out["usd_per_1000_images"] = price_per_hour / 3600 * seconds / images * 1000
    return out


def noise(telemetry: dict) -> list[str]:
    """Why a run's numbers are not the machine's alone: each cause in words (none: a quiet run). Other
    processes' CPU is measured, not read off the load average: that counts the run's own threads and
    decays over minutes, so a run started right after another (a round of --repeats) would inherit its
    load; the load average before the run is in ``machine_state`` (doctor.py)."""
    causes = []
    share = telemetry.get("others_cpu_share")
    if share is not None and share > OTHERS_CPU_SHARE:
        causes.append(
            f"other processes used {100 * share:.0f}% of the machine's CPU time in the window "
            f"(over {100 * OTHERS_CPU_SHARE:.0f}%)"
        )
    if (telemetry.get("throttle_share") or 0) > NOISY_SHARE:
        causes.append(
            f"GPU throttled ({', '.join(telemetry['throttle_reasons'])}) in "
            f"{100 * telemetry['throttle_share']:.0f}% "
            f"of the window's samples"
        )
    if (telemetry.get("other_gpu_process_share") or 0) > NOISY_SHARE:
        causes.append(
            f"another process on the GPU (pid {', '.join(map(str, telemetry['other_gpu_processes']))}) in "
            f"{100 * telemetry['other_gpu_process_share']:.0f}% of the window's samples"
        )
    return causes


def _visible_gpus(count: int) -> list[int]:
    """NVML indices of the first ``count`` GPUs the run's processes see (CUDA_VISIBLE_DEVICES, where it
    lists indices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    listed = [int(v) for v in visible.split(",") if v.strip().isdigit()]
    return (listed or list(range(count)))[:count]


def window_bounds(rows: list[dict], warmup: int, end: int) -> tuple[float, float] | None:
    """(start, end) of the window [warmup, end) in seconds since the epoch, from the iteration rows'
    stamps."""
    stamps = {r["iter"]: r.get("wall_time") for r in rows}
    if warmup > 0:
        start = stamps.get(warmup - 1)
    else:
        first = next((r for r in rows if r["iter"] == 0), None)
        start = first["wall_time"] - first["duration"] if first and first.get("wall_time") else None
    stop = stamps.get(end - 1)
    return (start, stop) if start is not None and stop is not None else None


class RunWatch:
    """What the launcher records around one implementation's run: the machine's state just before it
    (machine/doctor.py), the samples while it runs, and at its end, over the timed window, the telemetry
    summary and whether the run was noisy."""

    def __init__(self, cfg, run_dir: Path, processes_per_node: int, part: str = ""):
        from .doctor import machine_state

        bench = cfg.benchmark
        self.cfg, self.run_dir = cfg, run_dir
        self.state = machine_state(bench.device)
        self.missing: dict[str, str] = {}
        self.price = bench.price_per_hour
        if self.price is not None and self.price < 0:
            self._skip(
                "cost",
                f"benchmark.price_per_hour {self.price}: a price cannot be negative; no cost per image",
            )
            self.price = None
        cuda = bench.device == "cuda"
        gpus = (
            _visible_gpus(processes_per_node)
            if bench.telemetry_gpu == "on" or (bench.telemetry_gpu == "auto" and cuda)
            else None
        )
        self.sampler = None
        lo, hi = PERIOD_RANGE
        if not lo <= bench.telemetry_period_s <= hi:
            self._skip(
                "telemetry",
                f"benchmark.telemetry_period_s {bench.telemetry_period_s}: expected {lo} to {hi} s; "
                "nothing sampled",
            )
            return
        # each launch of a run (the leader; another node or SLURM task: its part) samples its own host
        name = f"telemetry-{part}.jsonl" if part else "telemetry.jsonl"
        self.sampler = Sampler(
            run_dir / name, bench.telemetry_period_s, gpus, own_per_gpu=1 if cuda else 0, missing=self.missing
        )
        for part, why in self.missing.items():
            if part == "gpu" and cuda:
                self._say(f"{why}; the run goes on without the GPU's telemetry")

    def _say(self, text: str) -> None:
        import sys

        print(f"telemetry: {text}", file=sys.stderr, flush=True)

    def _skip(self, part: str, why: str) -> None:
        self.missing[part] = why
        self._say(why)

    def start(self, pid: int) -> None:
        if self.sampler:
            self.sampler.start(pid)

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()

    def complete(self, record: dict) -> dict:
        """``record`` with the machine's state, the window's telemetry (summary.telemetry), what was not
        measured (summary.telemetry_missing) and the causes of noise (``noisy``; empty: a quiet run)."""
        import psutil

        record["machine_state"] = self.state
        summary = record.get("summary")
        if record.get("status") != "ok" or summary is None:
            return record
        missing = dict(self.missing)
        telemetry = {}
        rows_path = self.run_dir / "iterations.jsonl"
        rows = (
            [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.is_file() else []
        )
        bounds = window_bounds(rows, summary.get("warmup") or 0, summary.get("end") or 0) if rows else None
        if self.sampler is None:
            pass
        elif bounds is None:
            missing["window"] = (
                "no stamped window of iterations (this task has none): telemetry kept, not summarised"
            )
        else:
            telemetry = window_telemetry(
                self.sampler.rows,
                *bounds,
                summary.get("images") or 0,
                psutil.cpu_count() or 1,
                price_per_hour=self.price,
                gpus=self.sampler.gpus is not None,
            )
            if not telemetry.get("energy_parts"):
                missing.setdefault(
                    "energy", "no energy counter was readable (neither NVML nor RAPL): no J/img"
                )
            if telemetry["samples"] < MIN_SAMPLES:
                missing["noise"] = (
                    f"the window ({telemetry['seconds']:.2f} s) holds {telemetry['samples']} sample(s) of "
                    f"every {self.sampler.period_s} s: too few to judge other processes' CPU"
                )
        if telemetry:
            summary["telemetry"] = telemetry
        if missing:
            summary["telemetry_missing"] = missing
        record["noisy"] = noise(telemetry)
        return record
