"""Each native op against torchvision.ops, in one run, as a ratio.

    python benchmarks/ops.py [--device cpu|cuda|all] [--threads N] [--size small|full] [--min-time S]

Timing is torch.utils.benchmark's blocked_autorange (it synchronizes CUDA); ours and torchvision's are
measured alternately, --rounds times, and the median of the rounds is reported with the spread.
ratio = torchvision time / our time (> 1: ours is faster). Inputs are the shapes the model sees:
``full`` is the canonical 800x1333 scenario, ``small`` the CPU scenario.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torchvision
from mrcnn_bench.reference_impl import ops
from torch.utils import benchmark
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign


def _boxes(n, h, w, gen, device, min_wh=2.0):
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.9
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.5 + min_wh
    return torch.cat([xy, xy + wh], 1).to(device)


def cases(device: str, size: str):
    gen = torch.Generator().manual_seed(0)
    H, W = (800, 1088) if size == "full" else (192, 256)
    n_rois = 1024 if size == "full" else 512
    channels = 256
    strides = (4, 8, 16, 32)
    feats = {
        str(i): torch.randn(2, channels, H // s, W // s, generator=gen).to(device).requires_grad_()
        for i, s in enumerate(strides)
    }
    boxes = [_boxes(n_rois, H, W, gen, device) for _ in range(2)]
    rois = torch.cat(
        [torch.cat([torch.full((n_rois, 1), float(i), device=device), b], 1) for i, b in enumerate(boxes)]
    )
    p2 = feats["0"]
    grad7 = torch.randn(2 * n_rois, channels, 7, 7, generator=gen).to(device)
    pooler = MultiScaleRoIAlign(list(feats), 7, 2)
    flist = list(feats.values())
    scales = [1 / s for s in strides]

    def ours_roi():
        out = ops.roi_align(p2, rois, 7, 0.25, 2, True)
        out.backward(grad7)

    def tv_roi():
        out = torchvision.ops.roi_align(p2, rois, 7, 0.25, 2, True)
        out.backward(grad7)

    def ours_ml():
        ops.multilevel_roi_align(flist, rois, scales, 7, 2, False).backward(grad7)

    def tv_ml():
        pooler(feats, boxes, [(H, W)] * 2).backward(grad7)

    n_nms = 4000 if size == "full" else 2000
    nb = _boxes(n_nms, H, W, gen, device, 8.0)
    ns = torch.rand(n_nms, generator=gen).to(device)
    nl = torch.randint(0, 5, (n_nms,), generator=gen).to(device)

    n_anchors = 200_000 if size == "full" else 30_000
    anchors = _boxes(n_anchors, H, W, gen, device)
    deltas = torch.randn(n_anchors, 4, generator=gen).to(device)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    n_masks = 100 if size == "full" else 50
    masks = torch.rand(n_masks, 1, 28, 28, generator=gen).to(device)
    mboxes = _boxes(n_masks, H, W, gen, device)
    mboxes[:, 2] = mboxes[:, 2].clamp(max=W)
    mboxes[:, 3] = mboxes[:, 3].clamp(max=H)

    return [
        ("roi_align fwd+bwd (P2, 7x7)", ours_roi, tv_roi),
        ("multi-level roi_align fwd+bwd (P2-P5)", ours_ml, tv_ml),
        ("nms", lambda: ops.nms(nb, ns, 0.7), lambda: torchvision.ops.nms(nb, ns, 0.7)),
        (
            "batched_nms (5 groups)",
            lambda: ops.batched_nms(nb, ns, nl, 0.7),
            lambda: torchvision.ops.batched_nms(nb, ns, nl, 0.7),
        ),
        (
            "decode + clip boxes",
            lambda: ops.decode_boxes(deltas, anchors, clip_hw=(H, W)),
            lambda: torchvision.ops.clip_boxes_to_image(coder.decode_single(deltas, anchors), (H, W)),
        ),
        (
            "paste masks",
            lambda: ops.paste_masks(masks[:, 0], mboxes, H, W),
            lambda: paste_masks_in_image(masks, mboxes, (H, W), padding=1),
        ),
    ]


def measure(fn, min_time: float) -> float:
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time).median


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--size", choices=["small", "full"], default=None, help="[small on CPU, full on CUDA]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not ops.NATIVE:
        print(f"ops backend: {ops.backend()} -- build the extension first (make setup)", file=sys.stderr)
        return 2
    print(
        f"ops backend: {ops.backend()}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print()
    print("| op | device | size | ours (ms) | torchvision (ms) | ratio tv/ours (min-max over rounds) |")
    print("|---|---|---|---:|---:|---:|")
    for device in devices:
        size = args.size or ("full" if device == "cuda" else "small")
        for name, ours, theirs in cases(device, size):
            ours(), theirs()  # warm-up (CUDA context, caches)
            t_ours, t_tv = [], []
            for _ in range(args.rounds):
                t_ours.append(measure(ours, args.min_time))
                t_tv.append(measure(theirs, args.min_time))
            ratios = [b / a for a, b in zip(t_ours, t_tv)]
            print(
                f"| {name} | {device} | {size} | {statistics.median(t_ours) * 1e3:.3f} | "
                f"{statistics.median(t_tv) * 1e3:.3f} "
                f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
