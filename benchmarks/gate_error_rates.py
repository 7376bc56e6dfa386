"""The regression gate's error rates on this machine, measured with real runs (docs/reliability.md, "The
regression gate").

    python benchmarks/gate_error_rates.py [--baseline results/baselines/gate-cpu] [--trials 10]
        [--recompute 1.0] [--rounds 2] [--out results/gate-error-rates] [--threshold 5%]

1. False alarms on identical code: the gate over every ordered pair of the baseline's rounds (round i as
   the baseline, round j as the candidate: one run a side), and over every round against the other
   rounds (one candidate run against the rest).
2. Power: ``--trials`` candidates of ``--rounds`` interleaved rounds each, as `make gate` runs them, with
   a real slowdown of the reference: ``reference.recompute_backbone`` (the backbone + FPN forward run
   again without grad each iteration, results discarded). The slowdown is what the runs measure, not
   what the switch is meant to cost: the pooled estimate over all trials is reported beside the count
   of trials the gate caught.

Trials already finished under --out are kept (the command resumes). Writes OUT/error-rates.json and
prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from mrcnn_bench.harness.records.results import atomic_write_json
from mrcnn_bench.harness.report.regress import load_rounds, parse_threshold, regress

# the scenario `make gate` runs (Makefile GATE_SCENARIO)
SCENARIO = [
    "--impl",
    "reference,torchvision",
    "--config",
    "cpu_small",
    "--set",
    "benchmark.iters=15",
    "--set",
    "benchmark.warmup=5",
    "--set",
    "benchmark.window_end=15",
]


def _gate(base: Path, cand: Path, threshold: float):
    comparisons, failures, _ = regress(base, cand, threshold, relative_to="torchvision", impls=["reference"])
    if failures:
        raise SystemExit(f"{cand}: {failures[0].reason}")
    return comparisons[0]


def false_alarms(baseline: Path, threshold: float) -> dict:
    rounds = list(load_rounds(baseline))
    pairs, loo = [], []
    with tempfile.TemporaryDirectory() as tmp:

        def folder(name, members):
            d = Path(tmp) / name
            for r in members:
                shutil.copytree(r, d / r.name)
            return d

        for i, j in itertools.permutations(range(len(rounds)), 2):
            c = _gate(folder(f"b{i}-{j}", [rounds[i]]), folder(f"c{i}-{j}", [rounds[j]]), threshold)
            pairs.append(
                {
                    "baseline": rounds[i].name,
                    "candidate": rounds[j].name,
                    "slowdown": c.slowdown,
                    "alarm": c.regression,
                }
            )
        for j in range(len(rounds)):
            rest = [r for k, r in enumerate(rounds) if k != j]
            c = _gate(folder(f"rest{j}", rest), folder(f"one{j}", [rounds[j]]), threshold)
            loo.append(
                {
                    "candidate": rounds[j].name,
                    "slowdown": c.slowdown,
                    "ci": [c.ci_low, c.ci_high],
                    "alarm": c.regression,
                }
            )
    return {"rounds": len(rounds), "ordered_pairs": pairs, "one_against_the_rest": loo}


def power(
    baseline: Path, out: Path, trials: int, recompute: float, rounds: int, threshold: float
) -> list[dict]:
    results = []
    for t in range(1, trials + 1):
        run = out / f"trial-{t}"
        done = run.is_dir() and len(list(run.glob("r*/*/run.json"))) == 2 * rounds
        if not done:
            print(
                f"== trial {t}/{trials}: {rounds} round(s), reference.recompute_backbone={recompute}",
                file=sys.stderr,
                flush=True,
            )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mrcnn_bench.harness.cli",
                    "run",
                    *SCENARIO,
                    "--repeats",
                    str(rounds),
                    "--set",
                    f"reference.recompute_backbone={recompute}",
                    "--out",
                    str(out),
                    "--run-id",
                    run.name,
                    "--force",
                ],
                check=False,
            )
        c = _gate(baseline, run, threshold)
        results.append(
            {
                "trial": t,
                "slowdown": c.slowdown,
                "ci": [c.ci_low, c.ci_high],
                "caught": c.regression,
                "verdict": c.verdict,
            }
        )
        print(f"trial {t}: {c.verdict}", file=sys.stderr, flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, default=Path("results/baselines/gate-cpu"))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--recompute", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threshold", default="5%")
    ap.add_argument("--out", type=Path, default=Path("results/gate-error-rates"))
    args = ap.parse_args(argv)
    threshold = parse_threshold(args.threshold)
    null = false_alarms(args.baseline, threshold)
    trials = (
        power(args.baseline, args.out, args.trials, args.recompute, args.rounds, threshold)
        if args.trials
        else []
    )
    report = {
        "baseline": str(args.baseline),
        "threshold": threshold,
        "recompute_backbone": args.recompute,
        "rounds_per_trial": args.rounds,
        "identical_code": null,
        "trials": trials,
    }
    if trials:
        report["slowdown_pooled"] = float(np.exp(np.mean(np.log([t["slowdown"] for t in trials]))))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "error-rates.json", report)

    pairs, loo = null["ordered_pairs"], null["one_against_the_rest"]
    spread = [p["slowdown"] for p in pairs]
    print(
        f"identical code, {null['rounds']} rounds: {sum(p['alarm'] for p in pairs)} alarm(s) in {len(pairs)} "
        "ordered pairs "
        f"(slowdown {min(spread):.3f}..{max(spread):.3f}); {sum(p['alarm'] for p in loo)} in {len(loo)} "
        f"one-round-against-the-rest gates"
    )
    if trials:
        s = [t["slowdown"] for t in trials]
        print(
            f"recompute_backbone={args.recompute}: measured slowdown {report['slowdown_pooled']:.3f} "
            "(pooled; "
            f"{min(s):.3f}..{max(s):.3f} per trial); caught in {sum(t['caught'] for t in trials)} of "
            f"{len(trials)} trials "
            f"of {args.rounds} round(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
