"""The reference's multi-level RoIAlign at cpu_canonical's size with NHWC (channels-last) FPN levels, as
the reference now reads them (where they lie) against a copy to NCHW first (what its CPU kernel did
before), each fused (one call over the levels) and per level, forward and backward.

    python benchmarks/pooler_layout.py [--threads 2] [--rounds 5]

P2–P5 of a batch of 2 images at 800 × 1088, 256 channels; 1024 box RoIs pooled at 7 × 7 and 256 mask
RoIs at 14 × 14 (boxes drawn at random over the image, sizes log-uniform from 4 to 600 px); the
gradient of each level then meets the FPN's own (an add), as in a training step. Milliseconds per call:
the median and the minimum over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from mrcnn_bench.reference_impl import ops
from mrcnn_bench.reference_impl.engine.allocator import keep_freed_memory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory(True)
    gen = torch.Generator().manual_seed(0)
    height, width = 800, 1088
    feats = [
        torch.randn(2, 256, height // s, width // s, generator=gen).to(memory_format=torch.channels_last)
        for s in (4, 8, 16, 32)
    ]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]

    def boxes(n):
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([width, height])
        wh = torch.exp(torch.rand(n, 2, generator=gen) * 5) * 4
        b = torch.cat([xy, xy + wh], 1)
        b[:, 0::2].clamp_(0, width)
        b[:, 1::2].clamp_(0, height)
        return torch.cat([torch.randint(0, 2, (n, 1), generator=gen).float(), b], 1)

    box_rois, mask_rois = boxes(1024), boxes(256)

    def step(copy_to_nchw: bool, fused: bool):
        levels = [f.detach().requires_grad_() for f in feats]
        inputs = [f.contiguous() for f in levels] if copy_to_nchw else levels
        pooled = [
            ops.multilevel_roi_align(inputs, rois, scales, size, 0, True, fused=fused)
            for rois, size in ((box_rois, 7), (mask_rois, 14))
        ]
        torch.autograd.backward(pooled, [torch.ones_like(p) for p in pooled])
        return [(f.grad if f.grad is not None else 0) + f for f in levels]

    variants = {
        "NCHW copy, fused": (True, True),
        "NHWC, fused": (False, True),
        "NCHW copy, per level": (True, False),
        "NHWC, per level": (False, False),
    }
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, flags in variants.items():
            start = time.perf_counter()
            step(*flags)
            times[name].append(time.perf_counter() - start)
    print(
        f"multi-level RoIAlign, forward + backward, {torch.get_num_threads()} threads ({args.rounds} rounds)"
    )
    print("| levels read | ms per call: median | min |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {1e3 * statistics.median(ts):.0f} | {1e3 * min(ts):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
