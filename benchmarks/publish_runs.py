"""How long `mrcnn-bench publish` takes over many run folders, and a second publish after one new round.

    python benchmarks/publish_runs.py [--runs 200] [--work /tmp/publish-bench]

Makes --runs run folders from the committed cpu_small rounds (copies of
results/baselines/cpu_small/r*-shipped, each
round a folder of four runs, their times and commits as recorded), publishes them into a fresh site,
then adds one round (four runs) and publishes again; prints the seconds and pages of each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from mrcnn_bench.harness.report.site import publish

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/tmp/publish-bench"))
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    # the rounds as shipped (r<k>-shipped: one scenario), each the four implementations
    sources = sorted(
        p for p in (ROOT / "results" / "baselines" / "cpu_small").glob("r*-shipped") if p.is_dir()
    )
    results, made = args.work / "results", 0
    while made < args.runs:
        src = sources[(made // 4) % len(sources)]
        dst = results / f"round{made // 4:04d}"
        shutil.copytree(src, dst)
        made += sum(1 for _ in dst.glob("*/run.json"))
    t = time.perf_counter()
    first = publish(results, args.work / "site")
    first_s = time.perf_counter() - t
    shutil.copytree(sources[0], results / "round-new")
    t = time.perf_counter()
    second = publish(results, args.work / "site")
    second_s = time.perf_counter() - t
    print(
        f"{made} run folders: first publish {first_s:.1f} s ({len(first.written)} pages, {first.copied} "
        "files copied); "
        f"one round more: {second_s:.1f} s ({len(second.written)} pages written, {len(second.kept)} kept, "
        f"{second.copied} files copied)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
