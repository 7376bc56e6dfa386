"""PNG plots (matplotlib, no display needed): throughput bars with 95% intervals, per-iteration times
with the timed window shaded, and a scaling curve when runs at several world sizes exist."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..records.frames import iterations_of, phase_runs, runs_frame  # noqa: E402


def _save(fig, path: Path) -> None:
    """Atomically: render to a temporary file beside the target, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _label(row) -> str:
    extra = [] if row["dtype"] == "fp32" else [row["dtype"]]
    return " ".join([row["impl"], f"x{row['world_size']}", *extra])


def throughput_bar_data(df) -> pd.DataFrame:
    """One bar per implementation setting (impl, processes, dtype), slowest first: ``value`` is the img/s
    of its one run, with the run's 95% bootstrap interval as [low, high], or the median over repeated
    runs with their [min, max]; ``runs`` holds each run's img/s."""
    ok = df[df["status"] == "ok"]
    rows = []
    for label, g in ok.groupby(ok.apply(_label, axis=1), sort=False):
        values = g["images_per_s"].astype(float)
        if len(g) == 1:
            row = g.iloc[0]
            low, high = row["images_per_s_ci_low"], row["images_per_s_ci_high"]
            low = values.iloc[0] if pd.isna(low) else low
            high = values.iloc[0] if pd.isna(high) else high
        else:
            low, high = values.min(), values.max()
        rows.append(
            {
                "label": label,
                "impl": g["impl"].iloc[0],
                "value": float(values.median()),
                "low": float(low),
                "high": float(high),
                "runs": values.tolist(),
            }
        )
    columns = ["label", "impl", "value", "low", "high", "runs"]
    return pd.DataFrame(rows, columns=columns).sort_values("value", kind="stable").reset_index(drop=True)


def throughput_bars(df, path: Path) -> None:
    bars = throughput_bar_data(df)
    repeated = bars["runs"].map(len).max() > 1
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(bars) + 1.5))
    y = np.arange(len(bars))
    values = bars["value"].to_numpy()
    err = [(values - bars["low"]).clip(lower=0).to_numpy(), (bars["high"] - values).clip(lower=0).to_numpy()]
    colors = ["tab:red" if i == "reference" else "tab:blue" for i in bars["impl"]]
    ax.barh(y, values, xerr=err, color=colors, capsize=4)
    ax.set_yticks(y, bars["label"])
    for i, bar in bars.iterrows():
        if len(bar["runs"]) > 1:
            ax.plot(bar["runs"], [i] * len(bar["runs"]), "o", color="black", markersize=3)
        ax.text(bar["high"], i, f"  {bar['value']:.3g}", va="center")
    devices = ", ".join(sorted(set(df.loc[df["status"] == "ok", "device"])))
    how = (
        "median over runs (dots), whiskers: min-max over runs, or a single run's 95% bootstrap interval"
        if repeated
        else "whiskers: 95% bootstrap interval"
    )
    ax.set_xlabel(f"training throughput (images/s, {devices})\n{how}")
    ax.set_title("Mask R-CNN R-50-FPN training throughput")
    ax.set_xlim(0, max(bars["high"].max() * 1.3, 1e-9) if len(bars) else 1)
    _save(fig, path)


def iteration_times(records: list[dict], path: Path) -> None:
    """Each run's per-iteration times, one colour per implementation (repeated runs share it)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    window = None
    runs = Counter(r["impl"] for r in records)
    colors = dict(zip(sorted(runs), plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(runs)))
    labelled = set()
    for r in records:
        rows = iterations_of(r)
        if not rows:
            continue
        n = runs[r["impl"]]
        label = (
            None if r["impl"] in labelled else r["impl"] + (f" ({n} runs)" if n > 1 else f" ({r['status']})")
        )
        labelled.add(r["impl"])
        ax.plot(
            [x["iter"] for x in rows],
            [x["duration"] for x in rows],
            marker=".",
            color=colors[r["impl"]],
            alpha=0.8,
            label=label,
        )
        w = r.get("window") or {}
        window = (w.get("warmup"), w.get("end"))
    if window and None not in window:
        ax.axvspan(
            window[0] - 0.5,
            window[1] - 0.5,
            color="grey",
            alpha=0.15,
            label=f"timed window [{window[0]}, {window[1]})",
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("seconds per iteration")
    ax.set_title("Per-iteration time")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def scaling_curve(df, path: Path) -> bool:
    ok = df[df["status"] == "ok"]
    groups = [(k, g) for k, g in ok.groupby(["impl", "dtype"]) if g["world_size"].nunique() > 1]
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for (impl, dtype), g in groups:
        per = g.groupby("world_size")["images_per_s"].median()
        ax.plot(per.index, per.values, marker="o", label=f"{impl} {dtype}")
        ax.plot(per.index, per.values[0] / per.index[0] * per.index, linestyle=":", color="grey")
    ax.set_xlabel("processes (GPUs)")
    ax.set_ylabel("images/s")
    ax.set_title("Scaling (dotted: linear)")
    ax.legend()
    _save(fig, path)
    return True


def telemetry_plot(records: list[dict], path: Path) -> bool:
    """What the machine did over each finished run's window (telemetry.jsonl): utilisation, clock and power
    against the seconds since the window's start, a line per run (GPU where sampled, else the CPU's).
    False (nothing written) where no run has samples."""
    from ..machine.telemetry import window_bounds

    series = []
    for r in records:
        folder = Path(r["_path"]).parent if r.get("_path") else None
        if r["status"] != "ok" or folder is None or not (folder / "telemetry.jsonl").is_file():
            continue
        bounds = window_bounds(iterations_of(r), r["window"]["warmup"], r["window"]["end"])
        if bounds is None:
            continue
        samples = [json.loads(line) for line in (folder / "telemetry.jsonl").read_text().splitlines()]
        samples = [x for x in samples if bounds[0] <= x["t"] <= bounds[1]]
        if samples:
            series.append((f"{r['impl']} ({r['run_id']})", bounds[0], samples))
    if not series:
        return False
    panels = [
        ("utilisation (%)", "util", lambda x: sum(x["cpu_util"]) / len(x["cpu_util"])),
        (
            "clock (MHz)",
            "sm_mhz",
            lambda x: sum(x["cpu_mhz"]) / len(x["cpu_mhz"]) if x.get("cpu_mhz") else None,
        ),
        ("power (W)", "power_w", lambda x: None),
    ]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, (label, gpu_key, cpu_value) in zip(axes, panels):
        for name, t0, samples in series:
            on_gpu = bool(samples[0].get("gpus"))
            values = [
                sum(g[gpu_key] or 0 for g in x["gpus"]) / (1 if gpu_key == "power_w" else len(x["gpus"]))
                if on_gpu
                else cpu_value(x)
                for x in samples
            ]
            if any(v is not None for v in values):
                ax.plot(
                    [x["t"] - t0 for x in samples],
                    values,
                    marker=".",
                    label=f"{name}, {'GPU' if on_gpu else 'CPU'}",
                )
        ax.set_ylabel(label)
        if not ax.lines:
            ax.text(
                0.5, 0.5, "not measured on this machine", transform=ax.transAxes, ha="center", color="grey"
            )
    axes[0].legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("seconds since the timed window's start")
    fig.suptitle("The machine during the timed window (harness/machine/telemetry.py)")
    _save(fig, path)
    return True


def write_plots(records: list[dict], out_dir: Path) -> list[Path]:
    """The plots of the runs: each task's own (harness/tasks) for the runs of tasks that do not train,
    then throughput, iteration times and scaling for the training runs."""
    from ..tasks import tasks

    def task_of_run(r):
        return ((r.get("config") or {}).get("benchmark") or {}).get("task", "train")

    written, apart = [], {t.name for t in tasks().values() if not t.trains}
    for task in tasks().values():
        for name, fig in task.figures([r for r in records if task_of_run(r) == task.name]).items():
            _save(fig, out_dir / name)
            written.append(out_dir / name)
    records = [r for r in records if task_of_run(r) not in apart]
    if not records:
        return written
    df = runs_frame(records)
    if (df["status"] == "ok").any():
        throughput_bars(df, out_dir / "throughput.png")
        written.append(out_dir / "throughput.png")
    iteration_times(records, out_dir / "iterations.png")
    written.append(out_dir / "iterations.png")
    if scaling_curve(df, out_dir / "scaling.png"):
        written.append(out_dir / "scaling.png")
    if telemetry_plot(records, out_dir / "telemetry.png"):
        written.append(out_dir / "telemetry.png")
    return written


def history_plot(steps, path: Path, relative_to: str | None = None) -> Path:
    """Throughput over commits (``regress.history``), one panel per implementation, the step marked."""
    width = max(6.0, 0.5 * max(len(s.commits) for s in steps))
    fig, axes = plt.subplots(len(steps), 1, figsize=(width, 3 * len(steps)), squeeze=False)
    for ax, step in zip(axes[:, 0], steps):
        ax.plot(range(len(step.values)), step.values, "o-", color="tab:blue")
        if step.significant:
            ax.axvline(
                step.index - 0.5,
                color="tab:red",
                linestyle="--",
                label=f"step at {step.commits[step.index][:10]}: x{step.change:.3f}",
            )
            ax.legend(loc="best")
        ax.set_xticks(range(len(step.commits)), [c[:7] for c in step.commits], rotation=60, fontsize=7)
        ax.set_ylabel(f"img/s ÷ {relative_to}'s" if relative_to else "img/s")
        ax.set_title(step.impl)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def phases_plot(records: list[dict], path: Path) -> Path:
    """One stacked bar per implementation (fastest first): ms per iteration by phase."""
    from ..engine.phases import PHASES

    ok = phase_runs(runs_frame(records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(ok)), 5))
    colors = plt.get_cmap("tab20").colors
    bottoms = np.zeros(len(ok))
    for i, phase in enumerate(PHASES):
        values = np.array([row["phases_ms"].get(phase, 0.0) for _, row in ok.iterrows()])
        ax.bar(list(ok["impl"]), values, bottom=bottoms, label=phase, color=colors[i % len(colors)])
        bottoms += values
    ax.set_ylabel("ms per iteration (window mean)")
    ax.set_title("Where the time goes")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, Path(path))
    return Path(path)
