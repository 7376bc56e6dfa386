"""The suite's statistics in one place (as asv keeps its own in statistics.py): the bootstrap interval
of a run's throughput, the moving-block bootstrap of its variance, the interval of a slowdown over
repeated runs, and the step of a series over commits."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def throughput_ci(
    rows: list[dict], warmup: int, end: int, n: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
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


def block_bootstrap_log_var(images: np.ndarray, seconds: np.ndarray, n: int = 2000, seed: int = 0) -> float:
    """Variance of log(images / seconds) over a run's window by a moving-block bootstrap: blocks of about
    n^(1/3) neighbouring iterations are resampled together, so the autocorrelation of iteration times
    (a slow stretch lasts several iterations) stays in the estimate."""
    count = len(seconds)
    block = max(1, round(count ** (1 / 3)))
    starts = np.random.default_rng(seed).integers(0, count - block + 1, size=(n, math.ceil(count / block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n, -1)[:, :count]
    return float(np.var(np.log(images[idx].sum(1) / seconds[idx].sum(1)), ddof=1))


def slowdown_interval(base: np.ndarray, cand: np.ndarray, within_var: float, level: float = 0.95):
    """The candidate's slowdown over the baseline from per-run log throughputs: exp(mean(base) -
    mean(cand)) (> 1: slower) with a Student-t interval whose per-run variance is pooled from both
    sides' run-to-run spread (n + m - 2 degrees of freedom). With one run a side the run-to-run
    variance is unmeasured; the interval is then built from ``within_var``, the within-run variance
    (normal quantiles). That one overstates the noise of a run whose iterations differ in work by
    design (every run reads the same batches in the same order, so iteration i costs the same in every
    run), which is why it is only the fallback.

    Returns (slowdown, low, high, sd per run, degrees of freedom or None)."""
    base, cand = np.asarray(base, float), np.asarray(cand, float)
    df = len(base) + len(cand) - 2
    pooled = (((base - base.mean()) ** 2).sum() + ((cand - cand.mean()) ** 2).sum()) / df if df > 0 else 0.0
    sd = math.sqrt(pooled if df > 0 else within_var)
    diff = base.mean() - cand.mean()
    q = stats.t.ppf(0.5 + level / 2, df) if df > 0 else stats.norm.ppf(0.5 + level / 2)
    half = q * sd * math.sqrt(1 / len(base) + 1 / len(cand))
    return math.exp(diff), math.exp(diff - half), math.exp(diff + half), sd, (df if df > 0 else None)


def find_step(values: np.ndarray) -> tuple[int, float, float]:
    """The single step that best splits a series in two (least squares): (index of the first point after
    the step, the step's size as mean(after) - mean(before), Welch's two-sided p value). A series
    shorter than 4 has no step (index 0, size 0, p 1)."""
    values = np.asarray(values, float)
    if len(values) < 4:
        return 0, 0.0, 1.0
    costs = [
        ((values[:k] - values[:k].mean()) ** 2).sum() + ((values[k:] - values[k:].mean()) ** 2).sum()
        for k in range(2, len(values) - 1)
    ]
    k = 2 + int(np.argmin(costs))
    before, after = values[:k], values[k:]
    if np.ptp(values) == 0:
        return k, 0.0, 1.0
    p = float(stats.ttest_ind(after, before, equal_var=False).pvalue)
    return k, float(after.mean() - before.mean()), (1.0 if math.isnan(p) else p)
