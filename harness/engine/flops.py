"""The window's model FLOPs, from the work each implementation recorded, and the device's measured
matmul peak, for model FLOPs utilisation (MFU).

Mask R-CNN's work per image depends on the data and on the model's state: the backbone, FPN and RPN
head cost a fixed amount per padded input pixel, the box head a fixed amount per sampled RoI, the mask
head (the largest part at small image sizes) a fixed amount per positive RoI. The unit costs are
counted once by torch's FLOP counter (forward and backward, convolutions and matmuls; RoIAlign, NMS and
other custom kernels count as zero) on the reference's modules, which compute the same function as
every implementation's (``mrcnn-bench parity --check-forward``); the window's FLOPs are those costs
times the pixels, RoIs and positives each iteration recorded. So one implementation's MFU is its own
window's, and two implementations doing the same work are credited the same FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def training_step_flops(step) -> float:
    """FLOPs of ``step()`` (a forward + backward) counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def matmul_peak_flops(
    device: str, dtype: str = "fp32", seconds: float = 0.5, size: int | None = None
) -> float:
    """Measured FLOP/s of a square matmul on ``device`` with this process's threads (a calibration,
    not the datasheet number)."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if device.startswith("cpu") and dtype == "fp16":
        torch_dtype = torch.float32  # CPUs have no fast fp16 matmul; measure what AMP would fall back to
    n = size or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    reps, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        if reps % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2.0 * n**3 * reps / elapsed


@dataclass(frozen=True)
class UnitCosts:
    """Training FLOPs (forward + backward) per unit of work."""

    per_pixel: float  # backbone + FPN + RPN head, per padded input pixel
    per_roi: float  # box head, per sampled RoI
    per_positive: float  # mask head, per positive RoI
    # the forward FLOPs of each network phase (harness/engine/phases.py's names) per unit of FORWARD_UNITS
    forward: dict[str, float] = field(default_factory=dict, hash=False)

    def of(self, pixels: float, rois: float, positives: float) -> float:
        return self.per_pixel * pixels + self.per_roi * rois + self.per_positive * positives


def _forward_units() -> dict[str, str]:
    from .phases import BACKBONE, BOX_HEAD, FPN, MASK_HEAD, RPN_HEAD

    return {BACKBONE: "pixels", FPN: "pixels", RPN_HEAD: "pixels", BOX_HEAD: "rois", MASK_HEAD: "positives"}


def unit_costs(cfg, num_classes: int, side: int = 256, rois: int = 64) -> UnitCosts:
    """Count the unit costs on the reference's modules built from ``cfg`` (its frozen stages included:
    they have no weight gradients). Convolutions' FLOPs are linear in the pixels, the heads' in the RoIs."""
    from mrcnn_bench.reference_impl.config import ReferenceConfig
    from mrcnn_bench.reference_impl.modeling import MaskRCNN

    if cfg.model.effective_norm == "SyncBN":  # the same FLOPs, counted in this process alone (no collective)
        cfg = cfg.with_overrides({"model.backbone.norm": "BN", "model.backbone.norm_without_weights": "BN"})
    model = MaskRCNN.from_config(ReferenceConfig.from_canonical(cfg, num_classes)).train()
    channels = model.backbone.out_channels
    roi = cfg.model.roi_heads
    image = torch.randn(1, 3, side, side)

    def trunk():
        features = model.backbone(image)
        logits, deltas = model.rpn.head(features)
        sum(t.sum() for t in (*features, *logits, *deltas)).backward()

    def head(module, size):
        x = torch.randn(rois, channels, size, size, requires_grad=True)  # the pooled features carry gradients
        out = module(x)
        sum(t.sum() for t in (out if isinstance(out, tuple) else (out,))).backward()

    from .phases import BACKBONE, BOX_HEAD, FPN, MASK_HEAD, RPN_HEAD

    with torch.no_grad():  # each network phase's forward alone, as the phases table times it
        body = model.backbone.body(image)
        pyramid = model.backbone.fpn(body)
        box_x = torch.randn(rois, channels, roi.box_pooler_resolution, roi.box_pooler_resolution)
        mask_x = torch.randn(rois, channels, roi.mask_pooler_resolution, roi.mask_pooler_resolution)
        forward = {
            BACKBONE: training_step_flops(lambda: model.backbone.body(image)) / side**2,
            FPN: training_step_flops(lambda: model.backbone.fpn(body)) / side**2,
            RPN_HEAD: training_step_flops(lambda: model.rpn.head(pyramid)) / side**2,
            BOX_HEAD: training_step_flops(lambda: model.roi_heads.box_head(box_x)) / rois,
            MASK_HEAD: training_step_flops(lambda: model.roi_heads.mask_head(mask_x)) / rois,
        }
    return UnitCosts(
        per_pixel=training_step_flops(trunk) / side**2,
        per_roi=training_step_flops(lambda: head(model.roi_heads.box_head, roi.box_pooler_resolution)) / rois,
        per_positive=training_step_flops(lambda: head(model.roi_heads.mask_head, roi.mask_pooler_resolution))
        / rois,
        forward=forward,
    )


def cached_unit_costs(cfg, num_classes: int) -> UnitCosts:
    """``unit_costs`` kept on disk ($MRCNN_BENCH_FLOPS, default ~/.cache/mrcnn-bench/flops), keyed by
    the model section, the classes and torch's version: each run counts them after its window, and the
    count (a model built and stepped on the CPU) costs seconds that a short GPU visit would rather keep."""
    import hashlib
    import json
    import os
    from pathlib import Path

    key = json.dumps(
        {
            "model": cfg.model.model_dump(mode="json"),
            "classes": num_classes,
            "torch": torch.__version__,
            "version": 2,
        },
        sort_keys=True,
    )  # 2: with each network phase's forward
    folder = Path(os.environ.get("MRCNN_BENCH_FLOPS", Path.home() / ".cache" / "mrcnn-bench" / "flops"))
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    try:
        return UnitCosts(**json.loads(path.read_text())["costs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    costs = unit_costs(cfg, num_classes)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": json.loads(key), "costs": costs.__dict__}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: counted again next time
    return costs


def window_flops_per_image(costs: UnitCosts, rows: list[dict], warmup: int, end: int) -> float | None:
    """Model FLOPs per image over iterations [warmup, end) of one process's rows (``pixels``, ``rois``,
    ``positives`` and ``images``); None when some row lacks a counter."""
    window = [r for r in rows if warmup <= r["iter"] < end]
    if not window or any(r.get(k) is None for r in window for k in ("pixels", "rois", "positives")):
        return None
    images = sum(r["images"] for r in window)
    return sum(costs.of(r["pixels"], r["rois"], r["positives"]) for r in window) / images if images else None


def window_phase_flops(costs: UnitCosts, rows: list[dict], warmup: int, end: int) -> dict[str, float] | None:
    """Model FLOPs per iteration of each network phase over iterations [warmup, end) (the window's mean,
    as ``phases.window_phases`` gives its milliseconds): each forward phase its unit cost times the
    iteration's pixels, RoIs or positives, the backward the training FLOPs less the forwards, and
    ``"total"`` the training FLOPs; None without the counters or the phase costs."""
    from .phases import BACKWARD

    window = [r for r in rows if warmup <= r["iter"] < end]
    counters = ("pixels", "rois", "positives")
    if not window or not costs.forward or any(r.get(k) is None for r in window for k in counters):
        return None
    mean = {k: sum(r[k] for r in window) / len(window) for k in counters}
    flops = {phase: costs.forward[phase] * mean[unit] for phase, unit in _forward_units().items()}
    total = costs.of(**mean)
    return {**flops, BACKWARD: total - sum(flops.values()), "total": total}
