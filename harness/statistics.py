"""The suite's statistics in one place (as asv keeps its own in statistics.py): bootstrap intervals of
throughput and of a ratio of medians."""
from __future__ import annotations

import numpy as np


def throughput_ci(rows: list[dict], warmup: int, end: int, n: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap 95% interval of img/s, resampling the window's iterations."""
    window = [r for r in rows if warmup <= r["iter"] < end]
    if len(window) < 3:
        return None
    images = np.array([r.get("global_images", r["images"]) for r in window], dtype=float)
    times = np.array([r["duration"] for r in window], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(window), size=(n, len(window)))
    samples = images[idx].sum(1) / times[idx].sum(1)
    lo, hi = np.quantile(samples, [0.025, 0.975])
    return float(lo), float(hi)


def bootstrap_ratio_ci(base: np.ndarray, cand: np.ndarray, n: int = 4000, level: float = 0.95, seed: int = 0):
    rng = np.random.default_rng(seed)
    b = rng.choice(base, size=(n, len(base)), replace=True)
    c = rng.choice(cand, size=(n, len(cand)), replace=True)
    ratios = np.median(c, axis=1) / np.median(b, axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
