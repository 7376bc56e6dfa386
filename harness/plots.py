"""PNG plots (matplotlib, no display needed): throughput bars with 95% intervals, per-iteration times
with the timed window shaded, and a scaling curve when runs at several world sizes exist."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import iterations_of, runs_frame  # noqa: E402


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


def throughput_bars(df, path: Path) -> None:
    ok = df[df["status"] == "ok"].sort_values("images_per_s")
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(ok) + 1.5))
    values = ok["images_per_s"].to_numpy()
    lo = (ok["images_per_s"] - ok["images_per_s_ci_low"]).fillna(0).clip(lower=0).to_numpy()
    hi = (ok["images_per_s_ci_high"] - ok["images_per_s"]).fillna(0).clip(lower=0).to_numpy()
    labels = [_label(r) for _, r in ok.iterrows()]
    colors = ["tab:red" if i == "reference" else "tab:blue" for i in ok["impl"]]
    ax.barh(labels, values, xerr=[lo, hi], color=colors, capsize=4)
    for y, (v, h) in enumerate(zip(values, hi)):
        ax.text(v + h, y, f"  {v:.3g}", va="center")
    devices = ", ".join(sorted(set(ok["device"])))
    ax.set_xlabel(f"training throughput (images/s, {devices}); bars: 95% bootstrap interval")
    ax.set_title("Mask R-CNN R-50-FPN training throughput")
    ax.set_xlim(0, max((values + hi).max() * 1.3, 1e-9) if len(values) else 1)
    _save(fig, path)


def iteration_times(records: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    window = None
    for r in records:
        rows = iterations_of(r)
        if not rows:
            continue
        ax.plot([x["iter"] for x in rows], [x["duration"] for x in rows], marker=".", label=f"{r['impl']} ({r['status']})")
        w = r.get("window") or {}
        window = (w.get("warmup"), w.get("end"))
    if window and None not in window:
        ax.axvspan(window[0] - 0.5, window[1] - 0.5, color="grey", alpha=0.15, label=f"timed window [{window[0]}, {window[1]})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("seconds per iteration")
    ax.set_title("Per-iteration time")
    ax.set_ylim(bottom=0)
    ax.legend()
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


def write_plots(records: list[dict], out_dir: Path) -> list[Path]:
    df = runs_frame(records)
    written = []
    if (df["status"] == "ok").any():
        throughput_bars(df, out_dir / "throughput.png")
        written.append(out_dir / "throughput.png")
    iteration_times(records, out_dir / "iterations.png")
    written.append(out_dir / "iterations.png")
    if scaling_curve(df, out_dir / "scaling.png"):
        written.append(out_dir / "scaling.png")
    return written
