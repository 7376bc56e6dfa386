"""Each speed lever of the reference implementation, measured against the reference without it, in one run.

    python benchmarks/levers.py [--config cpu_small] [--rounds 5] [--iters 3] [--warmup 3] [--threads N]
                                [--device cpu|cuda] [--only NAME,...] [--set KEY=VALUE ...]

Every variant is a reference Trainer built as `mrcnn-bench run` builds it (adapters/reference.py), with
one switch changed. All variants are warmed up first; then, round after round, each runs ``--iters``
training iterations in turn, so the machine's drift hits them alike. A variant's speed-up in a round is
the baseline's time per iteration in that round over the variant's; the table gives the median over
rounds and the range, and how many times one training step makes the host wait for the device
(``reference_impl/syncs.py``: counted from the ops, so the CPU gives the number a GPU would stall on).
A lever that the baseline already uses (folded FrozenBN, batched targets, the data-loader worker) is
measured by turning it off: its own gain is the inverse of that row. The ``layout`` and ``pooler`` rows
run what the config does not: the other memory layout (NCHW or NHWC), the other RoIAlign (one fused
call over the FPN levels, or a call per level).
CUDA graphs are measured with ``--device cuda`` only (the CPU has none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from mrcnn_bench.adapters import get_adapter
from mrcnn_bench.adapters.base import DistInfo
from mrcnn_bench.harness.config.schema import load_config, parse_override, resolve_config_path
from mrcnn_bench.harness.data.datasets import resolve_data
from mrcnn_bench.harness.run.init_weights import with_shared_init
from mrcnn_bench.reference_impl.engine.allocator import keep_freed_memory
from mrcnn_bench.reference_impl.syncs import count_trainer_step_syncs

# name -> (config overrides, what it measures)
VARIANTS = {
    "baseline": (
        {},
        "fp32, the config's layout and RoIAlign (fused or per level), FrozenBN folded, heads eager, "
        "data-loader workers as configured",
    ),
    "amp": ({"benchmark.dtype": None}, "AMP: {dtype} autocast"),  # dtype from --amp-dtype
    "layout": ({}, "the other memory layout: {layout}"),  # reference.channels_last flipped from the config's
    "compile_heads": ({"reference.compile_heads": True}, "torch.compile of the box and mask heads"),
    "unfolded_bn": (
        {"reference.fold_frozen_bn": False},
        "off: each FrozenBN an affine pass after its convolution",
    ),
    "keep_freed_memory": (
        {"reference.keep_freed_memory": True},
        "glibc keeps freed host memory (no mmap and page faults per large tensor)",
    ),
    "pooler": ({}, "the other RoIAlign: {pooler}"),  # reference.fused_pooler flipped from the config's
    "no_loader_workers": (
        {"benchmark.num_workers": 0},
        "off: images decoded in the training process (no loader worker)",
    ),
    "per_image_targets": (
        {"reference.batched_targets": False},
        "off: proposals, matching, sampling and targets image by image (torchvision's way)",
    ),
    "cuda_graphs": (
        {"reference.cuda_graphs": True},
        "backbone + FPN replayed as CUDA graphs, one pair per batch shape",
    ),
}
CUDA_ONLY = {"cuda_graphs"}


def build(cfg, paths, device: str):
    _, trainer = get_adapter("reference").build_trainer(cfg, paths, DistInfo(device=device))
    return trainer


def timed(trainer, iters: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="iterations per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="iterations per variant before the rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp-dtype",
        choices=["bf16", "fp16"],
        default=None,
        help="the amp variant's dtype (default: bf16 on the CPU, fp16 on CUDA)",
    )
    parser.add_argument("--only", default=None, help="comma-separated variants besides the baseline")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = set(args.only.split(",")) - {""} if args.only is not None else set(VARIANTS)
    unknown = wanted - set(VARIANTS)
    if unknown:
        parser.error(f"--only: unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.device != "cuda" and args.only is not None and wanted & CUDA_ONLY:
        parser.error(f"--only: {', '.join(sorted(wanted & CUDA_ONLY))} needs --device cuda")
    names = ["baseline"] + [
        n
        for n in VARIANTS
        if n != "baseline" and n in wanted and (args.device == "cuda" or n not in CUDA_ONLY)
    ]
    base = dict(parse_override(o) for o in args.overrides)
    base.update({"benchmark.gpus": 1, "benchmark.device": args.device})
    device = torch.device(args.device)
    amp_dtype = args.amp_dtype or ("fp16" if args.device == "cuda" else "bf16")
    own = load_config(resolve_config_path(args.config), base).reference
    flipped = {
        "layout": {
            "reference.channels_last": not own.channels_last
        },  # the rows that run what the config does not
        "pooler": {"reference.fused_pooler": not own.fused_pooler},
    }
    layout = "channels-last (NHWC)" if not own.channels_last else "NCHW"
    pooler = "one fused call over all FPN levels" if not own.fused_pooler else "a RoIAlign call per FPN level"
    trainers, syncs, keep = {}, {}, {}
    for name in names:
        overrides = dict(VARIANTS[name][0])
        if name == "amp":
            overrides["benchmark.dtype"] = amp_dtype
        overrides.update(flipped.get(name, {}))
        cfg = load_config(resolve_config_path(args.config), {**base, **overrides})
        paths, _ = resolve_data(cfg.data)
        cfg, _ = with_shared_init(cfg, paths)  # every variant from the same weights: the same work
        trainers[name] = build(cfg, paths, args.device)
        keep[name] = cfg.reference.keep_freed_memory  # process-wide: set before each variant's iterations
        print(f"warming up {name} ({args.warmup} iterations)", file=sys.stderr, flush=True)
        keep_freed_memory(keep[name])
        timed(trainers[name], args.warmup, device)
        syncs[name] = count_trainer_step_syncs(trainers[name], sites=False).total
    per_round = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            keep_freed_memory(keep[name])
            per_round[name].append(timed(trainers[name], args.iters, device))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {1e3 * per_round[n][-1]:.0f} ms" for n in names),
            file=sys.stderr,
            flush=True,
        )
    print(
        f"reference levers, {cfg.name}, {cfg.ims_per_process_step} images/iteration, "
        f"{torch.get_num_threads()} threads, {device}; "
        f"{args.rounds} rounds x {args.iters} iterations after {args.warmup} warm-up"
    )
    print(
        "| variant | what | host syncs / step | ms/iter (median) | speed-up vs baseline: median [min, max] |"
    )
    print("|---|---|---:|---:|---:|")
    for name in names:
        ratios = [b / v for b, v in zip(per_round["baseline"], per_round[name])]
        cell = (
            "1"
            if name == "baseline"
            else f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"
        )
        print(
            f"| {name} | {VARIANTS[name][1].format(dtype=amp_dtype, layout=layout, pooler=pooler)} | "
            f"{syncs[name]} | {1e3 * statistics.median(per_round[name]):.0f} | {cell} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
