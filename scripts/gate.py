"""The CPU regression gate as an A/B on this machine: the reference of the gate's base commit against the
reference of this working tree, in interleaved runs, gated by ``mrcnn-bench regress``.

    python scripts/gate.py --base COMMIT [--rounds 3] [--out results/runs/gate] [-- RUN_ARGS...]

Why not the committed rounds: the reference's img/s over torchvision's is a property of the CPU as well as
of the code (1.29 on an AMD EPYC, 1.5-1.7 on Intel Xeons for the same scenario), and CI's machine need not
be the one that recorded the baseline. Both sides measured here, one after the other, compare like with
like. The base commit's sources are checked out under ``$MRCNN_BENCH_CACHE/gate/<commit>`` (a shared clone
of this repository: its objects are read from here) and its extension built in place, CPU kernels only;
its harness runs through ``PYTHONPATH``, which Python searches before the editable install's finder.

The sides run base, candidate, candidate, base, base, candidate, ...: a drift of the machine's speed over
the gate falls on both alike. Exit status: regress's (0 pass, 1 regression or a failed run, 2 not
comparable). Where the base commit is not in this clone (a shallow one), the gate says so loudly and falls
back to the committed rounds (``--baseline``), relative to torchvision in the same round, which is only as
good as the likeness of this CPU to the one that recorded them (``regress`` names a different model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapters", "configs", "external", "harness", "reference_impl")  # mrcnn_bench.<name> (setup.py)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def resolve(commit: str) -> str | None:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        return None


def base_tree(sha: str, cache: Path) -> Path:
    """The base commit's sources, built, with a ``pkg/mrcnn_bench`` namespace over them; reused when the
    cache already holds that commit built."""
    where = cache / "gate" / sha
    src, pkg = where / "src", where / "pkg" / "mrcnn_bench"
    built = src / ".built"
    if not built.exists() or _head(src) != sha:
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        print(f"gate: checking out the base commit {sha[:12]} into {src}", flush=True)
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(ROOT), str(src)], check=True)
        git("checkout", "-q", "--detach", sha, cwd=src)
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "FORCE_CUDA")}
        print("gate: building its extension (CPU kernels)", flush=True)
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=src,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        built.touch()
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = pkg / name
        if (src / name).is_dir() and not link.exists():
            link.symlink_to(src / name, target_is_directory=True)
    return pkg.parent


def _head(src: Path) -> str | None:
    try:
        return git("rev-parse", "HEAD", cwd=src)
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError):
        return None


def interleaved(rounds: int) -> list[str]:
    """base, candidate, candidate, base, base, candidate, ...: ``rounds`` runs a side."""
    return [
        side
        for i in range(rounds)
        for side in (("base", "candidate") if i % 2 == 0 else ("candidate", "base"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", required=True, help="the commit whose reference the candidate is gated against"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "gate")
    parser.add_argument("--threshold", default="5%")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=ROOT / "results" / "baselines" / "gate-cpu",
        help="committed rounds of the reference and torchvision: the gate when --base is not here",
    )
    parser.add_argument("--bench", default=str(Path(sys.executable).parent / "mrcnn-bench"))
    parser.add_argument("run_args", nargs="*", help="after --: the scenario, as `mrcnn-bench run` takes it")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: at least 2 a side (the run-to-run spread is measured, not assumed)")
    shutil.rmtree(args.out, ignore_errors=True)
    sha = resolve(args.base)
    if sha is None:
        return committed_rounds_gate(args)
    cache = Path(os.environ.get("MRCNN_BENCH_CACHE") or Path.home() / ".cache" / "mrcnn-bench")
    base_path = base_tree(sha, cache)
    count = {"base": 0, "candidate": 0}
    for side in interleaved(args.rounds):
        count[side] += 1
        env = dict(os.environ)
        if side == "base":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(base_path), env.get("PYTHONPATH")]))
        print(f"gate: {side} run {count[side]} of {args.rounds}", flush=True)
        # a failed run is recorded as failed (run.json), and regress fails the gate on it below
        out = ["--out", str(args.out / side), "--run-id", f"r{count[side]}"]
        bench(args, "run", *args.run_args, "--impl", "reference", *out, env=env)
    return regress(args, args.out / "base", args.out / "candidate")


def bench(args, *argv: str, env: dict | None = None) -> int:
    return subprocess.run([args.bench, *argv], env=env, cwd=ROOT).returncode


def regress(args, baseline: Path, candidate: Path, *extra: str) -> int:
    where = ["--baseline", str(baseline), "--candidate", str(candidate)]
    return bench(args, "regress", *where, *extra, "--impl", "reference", "--threshold", args.threshold)


def committed_rounds_gate(args) -> int:
    bar = "=" * 100
    print(
        f"{bar}\ngate: WARNING: the base commit {args.base} is not in this clone (shallow?), so the "
        f"candidate is gated against\nthe committed rounds {args.baseline}, relative to torchvision: "
        "valid only on a CPU like the one that recorded them.\n" + bar,
        flush=True,
    )
    out = ["--out", str(args.out.parent), "--run-id", args.out.name]
    bench(args, "run", *args.run_args, "--impl", "reference,torchvision", "--repeats", str(args.rounds), *out)
    return regress(args, args.baseline, args.out, "--relative-to", "torchvision")


if __name__ == "__main__":
    sys.exit(main())
