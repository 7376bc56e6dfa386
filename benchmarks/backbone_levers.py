"""The reference's ResNet-50-FPN alone, forward and backward, with each layout and FrozenBN lever.

    python benchmarks/backbone_levers.py [--threads 2] [--size 800 1088] [--batch 2] [--rounds 6]
                                         [--norm FrozenBN|BN]

What ``benchmarks/levers.py`` cannot show on the CPU configs, which train from no weights with BN: the
backbone as the GPU benchmark trains it (``model.weights`` given: FrozenBN, the stem and res2 frozen),
in four variants: NCHW or channels-last, each with FrozenBN as a separate affine or folded into its
convolution (``reference.fold_frozen_bn``). The variants are built once and timed in turn, round after
round (a drift of the machine falls on each alike); a variant's time is one forward and backward pass
of ``sum(level.mean())`` over the FPN's outputs, its speed-up the median's ratio to NCHW unfolded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from mrcnn_bench.reference_impl.modeling.backbone import ResNetFPN

VARIANTS = {
    "nchw": (False, False),
    "nchw+fold": (False, True),
    "channels_last": (True, False),
    "channels_last+fold": (True, True),
}


def step(model: ResNetFPN, x: torch.Tensor) -> float:
    start = time.perf_counter()
    sum(level.mean() for level in model(x)).backward()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1088], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--norm", choices=["FrozenBN", "BN"], default="FrozenBN")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    freeze_at = 2 if args.norm == "FrozenBN" else 0
    x = torch.randn(args.batch, 3, *args.size)
    models, inputs = {}, {}
    for name, (nhwc, fold) in VARIANTS.items():
        torch.manual_seed(0)
        model = ResNetFPN(norm=args.norm, freeze_at=freeze_at)
        model.body.fold_frozen_bn(fold)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        models[name], inputs[name] = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        step(models[name], inputs[name])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS:
            times[name].append(step(models[name], inputs[name]))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {1e3 * t[-1]:.0f} ms" for n, t in times.items()),
            file=sys.stderr,
            flush=True,
        )
    base = statistics.median(times["nchw"])
    print(
        f"ResNet-50-FPN ({args.norm}), {args.batch} x 3 x {args.size[0]} x {args.size[1]}, forward + "
        "backward, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    print("| variant | ms (median) | min - max | speed-up vs nchw |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(
            f"| {name} | {1e3 * statistics.median(t):.0f} | {1e3 * min(t):.0f} - {1e3 * max(t):.0f} | "
            f"{base / statistics.median(t):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
