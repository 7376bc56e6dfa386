"""The throughput regression gate: a candidate's runs against a baseline's, per implementation.

The model (docs/reliability.md, "The regression gate"). The unit of evidence is a run: one round of the
implementations (``mrcnn-bench run --repeats N`` interleaves N of them). In each run an
implementation's value is its throughput over the window, images over wall seconds, so that a stall
in a few iterations counts as it does for a user (a median would hide it). With ``relative_to`` the
value is that throughput over the peer's in the same round, which cancels the machine's speed of
the moment. Baseline and candidate give one log value per run; the slowdown is exp(mean(baseline) -
mean(candidate)) and its interval a Student-t one whose per-run variance is pooled from both sides'
run-to-run spread; with one run a side, the within-run variance (moving-block bootstrap of each run's
iterations) stands in for it. A regression is a slowdown whose interval lies above 1 and which
exceeds the threshold.

Exit codes of the command: 0 no regression; 1 a regression, or an implementation that failed or is
missing in the candidate; 2 runs that cannot be compared (what differs is said) or bad input.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config.schema import flatten, with_defaults
from ..records.frames import iterations_of
from ..records.results import ResultError, find_runs, load_run
from ..records.statistics import block_bootstrap_log_var, find_step, slowdown_interval


class NotComparable(ResultError):
    """Baseline and candidate measured different things (exit 2)."""


@dataclass
class Comparison:
    impl: str
    relative_to: str | None
    baseline_runs: int
    candidate_runs: int
    baseline_value: float  # geometric mean over runs: img/s, or the ratio to the peer's img/s
    candidate_value: float
    slowdown: float  # candidate's time per image over the baseline's (> 1: slower)
    ci_low: float
    ci_high: float
    sd_per_run: float  # of the log value, what the interval is built from
    df: int | None  # degrees of freedom of the run-to-run variance; None: one run a side, within-run only
    regression: bool
    verdict: str
    batch_size: int | None = None  # inference runs: each batch size is gated on its own

    @property
    def label(self) -> str:
        return self.impl if self.batch_size is None else f"{self.impl} (batch {self.batch_size})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Failure:
    """An implementation of the baseline that the candidate does not deliver: it fails the gate."""

    impl: str
    reason: str
    regression: bool = field(default=True, init=False)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ the runs
def _window(record: dict, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and seconds of each iteration in the window [warmup, end); of an inference run, each
    timed call of one batch size."""
    w = record["window"]
    rows = [
        r
        for r in iterations_of(record)
        if w["warmup"] <= r["iter"] < w["end"] and (batch_size is None or r.get("batch_size") == batch_size)
    ]
    need = 3 if batch_size is None else 2
    if len(rows) < need:
        where = f"the window [{w['warmup']}, {w['end']})" + (
            "" if batch_size is None else f" at batch size {batch_size}"
        )
        raise ResultError(
            f"{Path(record['_path']).parent / 'iterations.jsonl'}: {len(rows)} iterations in {where}; "
            f"need at least {need}"
        )
    return (
        np.array([r.get("global_images", r["images"]) for r in rows], float),
        np.array([r["duration"] for r in rows], float),
    )


def load_rounds(path: str | Path) -> dict[Path, dict[str, dict]]:
    """The runs under ``path`` by round (the folder holding the implementations' folders), then by
    implementation. A missing or empty folder, or a record of another schema, is an input error."""
    path = Path(path)
    if not path.exists():
        raise ResultError(f"{path}: no such file or folder")
    found = find_runs([path])
    if not found:
        raise ResultError(f"{path}: no run.json below it (expected a run folder from `mrcnn-bench run`)")
    rounds: dict[Path, dict[str, dict]] = defaultdict(dict)
    for run_json in found:
        record = load_run(run_json)  # names the file and the schema versions it can read
        rounds[run_json.parent.parent][record["impl"]] = record
    return dict(sorted(rounds.items()))


_NOT_SCENARIO = ("description", "benchmark.timeout_s", "benchmark.threads_per_rank", "benchmark.num_workers")


def scenario(record: dict) -> dict:
    """What two runs must share to be compared: the shared config (implementation switches such as
    ``reference.*`` are what is under test, like code; file locations count by name only), dtype, world
    size, window and the device kind (cpu, or the GPU's model)."""
    config = {
        k: v
        for k, v in flatten(with_defaults(record.get("config") or {})).items()
        if not k.startswith("reference.") and k not in _NOT_SCENARIO
    }
    for key in ("model.init_weights", "model.weights", "data.root"):
        if isinstance(config.get(key), str):
            config[key] = Path(config[key]).name
    gpus = sorted(set((record.get("environment") or {}).get("gpus") or []))
    return {
        "config": config,
        "config hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12],
        # each as shipped or at its best (--best): a baseline of one mode is no baseline for the other
        "settings": config.get("benchmark.settings", "shipped"),
        "dtype": record.get("dtype"),
        "world size": record.get("world_size"),
        "window": f"[{record['window']['warmup']}, {record['window']['end']})",
        "device kind": record["device"] if record["device"] == "cpu" else ", ".join(gpus) or record["device"],
    }


def check_comparable(base: dict, cand: dict, base_name: str, cand_name: str) -> None:
    a, b = scenario(base), scenario(cand)
    differs = [
        f"{key}: {a[key]} vs {b[key]}"
        for key in ("settings", "dtype", "world size", "window", "device kind")
        if a[key] != b[key]
    ]
    if a["config hash"] != b["config hash"] and a["settings"] == b["settings"]:
        keys = sorted(set(a["config"]) | set(b["config"]))
        changed = [
            f"{k} ({a['config'].get(k, '(absent)')!r} vs {b['config'].get(k, '(absent)')!r})"
            for k in keys
            if a["config"].get(k, "(absent)") != b["config"].get(k, "(absent)")
        ]
        differs.append(f"config hash: {a['config hash']} vs {b['config hash']}, at {', '.join(changed)}")
    if differs:
        raise NotComparable(
            f"{base_name} ({base['impl']}) and {cand_name} ({cand['impl']}) are not comparable; "
            f"{'; '.join(differs)}"
        )


# ----------------------------------------------------------------------------------- the gate
def _values(
    rounds: dict[Path, dict[str, dict]], impl: str, peer: str | None, batch_size: int | None = None
) -> tuple[np.ndarray, float]:
    """Per-run log values of ``impl`` (at one batch size, for inference runs) over the rounds where it
    (and the peer) ran ok, and the mean within-run variance of those values."""
    logs, within = [], []
    for recs in rounds.values():
        if recs.get(impl, {}).get("status") != "ok" or (peer and recs.get(peer, {}).get("status") != "ok"):
            continue
        images, seconds = _window(recs[impl], batch_size)
        value, var = np.log(images.sum() / seconds.sum()), block_bootstrap_log_var(images, seconds)
        if peer:
            p_images, p_seconds = _window(recs[peer], batch_size)
            value -= np.log(p_images.sum() / p_seconds.sum())
            var += block_bootstrap_log_var(p_images, p_seconds)
        logs.append(value)
        within.append(var)
    return np.array(logs), float(np.mean(within)) if within else 0.0


def _candidate_failures(
    cand: dict[Path, dict[str, dict]], impls: list[str], peer: str | None
) -> list[Failure]:
    failures = []
    for impl in impls + ([peer] if peer else []):
        for where, recs in cand.items():
            if impl not in recs:
                failures.append(Failure(impl, f"{where}: no run of {impl}"))
            elif recs[impl]["status"] != "ok":
                failures.append(
                    Failure(impl, f"{where / impl}: {recs[impl]['status']}: {recs[impl].get('reason')}")
                )
    return failures


def compare(
    impl: str,
    base_logs: np.ndarray,
    cand_logs: np.ndarray,
    within_var: float,
    threshold: float,
    level: float = 0.95,
    relative_to: str | None = None,
    batch_size: int | None = None,
) -> Comparison:
    slowdown, lo, hi, sd, df = slowdown_interval(base_logs, cand_logs, within_var, level)
    significant = lo > 1.0
    regression = significant and slowdown > 1.0 + threshold
    ci = f"{100 * level:.0f}% CI {100 * (lo - 1):+.1f}%..{100 * (hi - 1):+.1f}%"
    pct = f"{100 * (slowdown - 1):+.1f}% time per image ({ci})"
    if regression:
        verdict = f"REGRESSION: {pct}"
    elif significant:
        verdict = f"slower, within the {100 * threshold:.0f}% threshold: {pct}"
    else:
        verdict = f"no significant slowdown: {pct}"
    if df is None:
        verdict += "; one run a side: run-to-run variance not measured (the threshold guards)"
    return Comparison(
        impl,
        relative_to,
        len(base_logs),
        len(cand_logs),
        float(np.exp(base_logs.mean())),
        float(np.exp(cand_logs.mean())),
        slowdown,
        lo,
        hi,
        sd,
        df,
        regression,
        verdict,
        batch_size,
    )


def refuse_noisy(sides: list[tuple[str | Path, dict]], impls: list[str], allow: bool) -> list[str]:
    """NotComparable naming each noisy run (run.json's ``noisy``: harness/machine/telemetry.py) of ``impls``
    on either side; with ``allow``, the same as warnings."""
    found = [
        f"{where / impl / 'run.json'}: noisy: {'; '.join(record['noisy'])}"
        for _, rounds in sides
        for where, recs in rounds.items()
        for impl, record in recs.items()
        if impl in impls and record["status"] == "ok" and record.get("noisy")
    ]
    if found and not allow:
        raise NotComparable(
            "a noisy run measures the machine's other work as well as the change; rerun on a quiet "
            "machine, or gate anyway with --allow-noisy:\n  " + "\n  ".join(found)
        )
    return found


def regress(
    baseline: str | Path,
    candidate: str | Path,
    threshold: float = 0.05,
    level: float = 0.95,
    relative_to: str | None = None,
    impls: list[str] | None = None,
    allow_noisy: bool = False,
) -> tuple[list[Comparison], list[Failure], list[str]]:
    """Gate ``candidate`` against ``baseline``: (comparisons, failures, warnings). Raises NotComparable
    for runs that measured different things or were noisy (unless ``allow_noisy``) and ResultError for
    bad input."""
    base, cand = load_rounds(baseline), load_rounds(candidate)
    ok_in_base = sorted({i for recs in base.values() for i, r in recs.items() if r["status"] == "ok"})
    if relative_to and relative_to not in ok_in_base:
        raise ResultError(f"--relative-to {relative_to}: the baseline {baseline} has no successful run of it")
    wanted = impls or ok_in_base
    unknown = [i for i in wanted if i not in ok_in_base]
    if unknown:
        raise ResultError(f"--impl {','.join(unknown)}: the baseline {baseline} has no successful run of it")
    wanted = [i for i in wanted if i != relative_to]
    if not wanted:
        raise ResultError(f"{baseline}: no implementation to gate besides the peer {relative_to}")
    noisy = refuse_noisy(
        [(baseline, base), (candidate, cand)], wanted + ([relative_to] if relative_to else []), allow_noisy
    )
    # every run on each side against the first of the baseline: one scenario throughout
    first = next(r for recs in base.values() for r in recs.values() if r["status"] == "ok")
    warnings = set(noisy)
    if Path(baseline).resolve() == Path(candidate).resolve():
        warnings.add(
            f"--baseline and --candidate are the same folder ({baseline}): the runs are compared with "
            "themselves, "
            "which says nothing about a change"
        )
    for rounds in (base, cand):
        for where, recs in rounds.items():
            for record in recs.values():
                if record["status"] != "ok":
                    continue  # a failed run has no window to compare; a failed candidate fails below
                check_comparable(first, record, f"{baseline}", str(where / record["impl"]))
                cpu = (record.get("environment") or {}).get("cpu")
                if record["device"] == "cpu" and cpu != (first.get("environment") or {}).get("cpu"):
                    warnings.add(
                        f"{where / record['impl']}: measured on CPU {cpu!r}, the baseline on "
                        f"{(first.get('environment') or {}).get('cpu')!r}"
                    )
    failures = _candidate_failures(cand, wanted, relative_to)
    # an inference run times several batch sizes (the same ones on both sides: they are in the config)
    sizes = sorted(int(b) for b in (first.get("summary") or {}).get("batch_sizes") or {}) or [None]
    comparisons = []
    for impl in wanted:
        if any(f.impl in (impl, relative_to) for f in failures):
            continue
        for size in sizes:
            base_logs, base_within = _values(base, impl, relative_to, size)
            cand_logs, cand_within = _values(cand, impl, relative_to, size)
            within = (base_within * len(base_logs) + cand_within * len(cand_logs)) / (
                len(base_logs) + len(cand_logs)
            )
            comparisons.append(
                compare(impl, base_logs, cand_logs, within, threshold, level, relative_to, size)
            )
    return comparisons, failures, sorted(warnings)


def parse_threshold(text: str) -> float:
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 10:
        raise ValueError(f"threshold {text!r} out of range")
    return value


# ---------------------------------------------------------------------------------- history
@dataclass
class Step:
    impl: str
    commits: list[str]  # in time order
    values: list[float]  # geometric mean per commit: img/s, or the ratio to the peer's
    index: int  # first commit after the step (0: none found)
    change: float  # value after / value before (< 1: slower)
    p_value: float
    significant: bool

    @property
    def commit(self) -> str | None:
        return self.commits[self.index] if self.significant else None


def history(
    path: str | Path,
    relative_to: str | None = None,
    impls: list[str] | None = None,
    threshold: float = 0.05,
    alpha: float = 0.01,
) -> list[Step]:
    """Throughput over commits (runs grouped by ``environment.git_sha``, ordered by when each commit's
    first run was measured), and per implementation the commit at which it stepped: the split into
    two segments with the least squared error of the log values, kept if Welch's test gives p < alpha
    and the step exceeds the threshold."""
    return history_of(load_rounds(path), str(path), relative_to, impls, threshold, alpha)


def _rate(record: dict) -> float | None:
    rate = (record.get("summary") or {}).get("images_per_s")
    return rate if isinstance(rate, (int, float)) and rate > 0 else None


def history_of(
    rounds: dict,
    where: str,
    relative_to: str | None = None,
    impls: list[str] | None = None,
    threshold: float = 0.05,
    alpha: float = 0.01,
) -> list[Step]:
    """``history`` over rounds already read ({round folder: {impl: record}}; ``where`` names them in
    errors)."""
    by_commit: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first_time: dict[str, str] = {}
    for recs in rounds.values():
        for impl, record in recs.items():
            if record["status"] != "ok" or impl == relative_to or (impls and impl not in impls):
                continue
            if relative_to and recs.get(relative_to, {}).get("status") != "ok":
                continue
            rate = _rate(record)
            peer = _rate(recs[relative_to]) if relative_to else 1.0
            if not rate or not peer:  # a run without a throughput (inference) has no history of img/s
                continue
            env = record.get("environment") or {}
            sha = env.get("git_sha") or "unknown"
            first_time[sha] = min(first_time.get(sha, env.get("time") or ""), env.get("time") or "")
            value = np.log(rate) - np.log(peer)
            by_commit[impl][sha].append(value)
    if not by_commit:
        raise ResultError(
            f"{where}: no successful run" + (f" with {relative_to} beside it" if relative_to else "")
        )
    steps = []
    for impl, commits in sorted(by_commit.items()):
        order = sorted(commits, key=lambda sha: first_time[sha])
        logs = np.array([np.mean(commits[sha]) for sha in order])
        index, size, p = find_step(logs)
        significant = p < alpha and abs(np.expm1(size)) > threshold
        steps.append(
            Step(impl, order, [float(np.exp(v)) for v in logs], index, float(np.exp(size)), p, significant)
        )
    return steps


def verdict_text(
    results: list[Comparison],
    failures: list[Failure],
    relative_to: str | None,
    confidence: float,
    fmt: str = "md",
) -> str:
    """The gate's answer: a table of the comparisons and a FAILED line per failure (md), or both as JSON."""
    if fmt == "json":
        return json.dumps(
            {"comparisons": [r.to_dict() for r in results], "failures": [f.to_dict() for f in failures]},
            indent=2,
        )
    import pandas as pd

    value = f"img/s ÷ {relative_to}'s" if relative_to else "img/s"
    lines = []
    if results:
        lines.append(
            pd.DataFrame(
                {
                    "Implementation": [r.label for r in results],
                    "Runs (base/cand)": [f"{r.baseline_runs}/{r.candidate_runs}" for r in results],
                    f"baseline {value}": [f"{r.baseline_value:.4g}" for r in results],
                    f"candidate {value}": [f"{r.candidate_value:.4g}" for r in results],
                    f"slowdown [{100 * confidence:.0f}% CI]": [
                        f"{r.slowdown:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in results
                    ],
                    "verdict": [r.verdict for r in results],
                }
            ).to_markdown(index=False, disable_numparse=True)
        )
    lines += [f"FAILED: {f.impl}: {f.reason}" for f in failures]
    return "\n".join(lines)


def comment_text(
    results: list[Comparison],
    failures: list[Failure],
    relative_to: str | None,
    confidence: float,
    warnings: list[str] = (),
) -> str:
    """The gate's verdict as a pull-request comment: a verdict line, each implementation's slowdown with its
    interval in words, then the table (verdict_text) and the warnings."""
    failed = failures or any(r.regression for r in results)
    lines = [
        f"**mrcnn-bench gate: {'FAILED' if failed else 'passed'}**"
        + (f" (throughput relative to {relative_to} in the same round)" if relative_to else ""),
        "",
    ]
    for r in results:
        lines.append(
            f"- {r.label}: ×{r.slowdown:.3f} time per image [{r.ci_low:.3f}, {r.ci_high:.3f}] "
            f"({100 * confidence:.0f}% interval): {r.verdict}"
        )
    lines += [f"- {f.impl}: failed: {f.reason}" for f in failures]
    lines += ["", verdict_text(results, [], relative_to, confidence, "md")]
    lines += [f"\n> warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def history_text(steps: list[Step], fmt: str = "md") -> str:
    """Per implementation: where its throughput stepped over the commits (or the best split when it did
    not)."""
    if fmt == "json":
        return json.dumps(
            [
                {
                    "impl": s.impl,
                    "commits": s.commits,
                    "values": s.values,
                    "step_commit": s.commit,
                    "change": s.change,
                    "p_value": s.p_value,
                }
                for s in steps
            ],
            indent=2,
        )
    lines = []
    for s in steps:
        where = (
            f"stepped at {s.commits[s.index]}: x{s.change:.3f} (p={s.p_value:.2g})"
            if s.significant
            else f"no step (best split x{s.change:.3f}, p={s.p_value:.2g})"
        )
        lines.append(f"{s.impl}: {len(s.commits)} commits; {where}")
    return "\n".join(lines)


def history_report(
    path,
    relative_to: str | None,
    impls: list[str] | None,
    threshold: float,
    plot: str | None,
    fmt: str = "md",
) -> str:
    """``regress --history``: the steps as text (nothing when none and Markdown), the plot written where
    asked."""
    import sys

    steps = history(path, relative_to, impls, threshold)
    if plot:
        from .plots import history_plot

        history_plot(steps, Path(plot), relative_to)
        print(f"plot: {plot}", file=sys.stderr)
    return history_text(steps, fmt) + "\n" if steps or fmt == "json" else ""
