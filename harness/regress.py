"""The throughput regression gate: candidate vs baseline, per implementation, by a statistical test.

Per-iteration times of the timed window are compared, not one number: a Mann-Whitney U test
(one-sided: is the candidate slower?) and a bootstrap confidence interval of the ratio of medians.
A regression is reported only when it is significant (p < alpha and the interval lies above 1) and
larger than the threshold. With ``relative_to``, each iteration time is first divided by the median
iteration time of a peer implementation measured in the same run, which cancels the machine's speed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .results import ResultError, find_runs, load_run, read_jsonl
from .statistics import bootstrap_ratio_ci


@dataclass
class Comparison:
    impl: str
    baseline_median_s: float
    candidate_median_s: float
    ratio: float  # candidate / baseline median iteration time (> 1: slower)
    ci_low: float
    ci_high: float
    p_value: float
    n_baseline: int
    n_candidate: int
    relative_to: str | None
    regression: bool
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def window_times(run_json: Path, record: dict) -> np.ndarray:
    """Per-iteration wall times of the timed window [warmup, end)."""
    path = Path(run_json).parent / "iterations.jsonl"
    if not path.is_file():
        raise ResultError(f"{path}: missing (needed for the per-iteration comparison)")
    rows = read_jsonl(path)
    w = record["window"]
    times = np.array([r["duration"] for r in rows if w["warmup"] <= r["iter"] < w["end"]], dtype=float)
    if len(times) < 3:
        raise ResultError(f"{path}: only {len(times)} iterations in the window [{w['warmup']}, {w['end']}); need at least 3")
    return times


def compare_times(impl: str, base: np.ndarray, cand: np.ndarray, threshold: float, alpha: float = 0.01,
                  relative_to: str | None = None) -> Comparison:
    ratio = float(np.median(cand) / np.median(base))
    lo, hi = bootstrap_ratio_ci(base, cand)
    p = float(stats.mannwhitneyu(cand, base, alternative="greater").pvalue)
    significant = p < alpha and lo > 1.0
    regression = significant and ratio > 1.0 + threshold
    if regression:
        verdict = f"REGRESSION: {100 * (ratio - 1):.1f}% slower (95% CI {100 * (lo - 1):.1f}%..{100 * (hi - 1):.1f}%, p={p:.2g})"
    elif significant:
        verdict = f"slower by {100 * (ratio - 1):.1f}%, within the {100 * threshold:.0f}% threshold"
    else:
        verdict = f"no significant slowdown (ratio {ratio:.3f}, p={p:.2g})"
    return Comparison(impl, float(np.median(base)), float(np.median(cand)), ratio, lo, hi, p, len(base), len(cand), relative_to, regression, verdict)


def _runs_by_impl(path: str | Path) -> dict[str, tuple[Path, dict]]:
    out = {}
    for run_json in find_runs([path]):
        record = load_run(run_json)
        if record["status"] != "ok":
            continue
        if record["impl"] in out:
            raise ResultError(f"{path}: holds more than one ok run of '{record['impl']}'; point at one run id")
        out[record["impl"]] = (run_json, record)
    if not out:
        raise ResultError(f"{path}: no successful run found")
    return out


def regress(baseline: str | Path, candidate: str | Path, threshold: float = 0.05, alpha: float = 0.01,
            relative_to: str | None = None, impls: list[str] | None = None) -> list[Comparison]:
    base_runs, cand_runs = _runs_by_impl(baseline), _runs_by_impl(candidate)
    common = [i for i in base_runs if i in cand_runs and (impls is None or i in impls)]
    if relative_to:
        for name, runs in (("baseline", base_runs), ("candidate", cand_runs)):
            if relative_to not in runs:
                raise ResultError(f"--relative-to {relative_to}: the {name} has no successful run of it")
        common = [i for i in common if i != relative_to]
    if not common:
        raise ResultError(f"{baseline} and {candidate} have no implementation in common to compare")
    results = []
    for impl in common:
        base = window_times(*base_runs[impl])
        cand = window_times(*cand_runs[impl])
        if relative_to:
            base = base / np.median(window_times(*base_runs[relative_to]))
            cand = cand / np.median(window_times(*cand_runs[relative_to]))
        results.append(compare_times(impl, base, cand, threshold, alpha, relative_to))
    return results


def parse_threshold(text: str) -> float:
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 10:
        raise ValueError(f"threshold {text!r} out of range")
    return value
