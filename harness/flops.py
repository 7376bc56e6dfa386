"""Model FLOPs per image (torch's FLOP counter over one training step) and the device's measured
matmul peak, for model FLOPs utilisation (MFU).

Only torch's own operators are counted (convolutions and matmuls dominate Mask R-CNN; RoIAlign,
NMS and other custom kernels count as zero), the same way for every implementation.
"""
from __future__ import annotations

import time

import torch


def training_step_flops(step) -> float:
    """FLOPs of ``step()`` (a forward + backward) counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def matmul_peak_flops(device: str, dtype: str = "fp32", seconds: float = 0.5, size: int | None = None) -> float:
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


def flops_per_image(trained_model, batches, step_fn) -> float:
    """Mean FLOPs per image of a training step over ``batches``, counted on a copy of the trained
    model: its proposals, and so the RoIs its heads see, are those of the timed window (a fresh
    model's random proposals make a different amount of work). ``step_fn(model, batch)`` runs one
    forward + backward and returns the number of images."""
    import copy

    model = copy.deepcopy(trained_model)
    model.train()
    total_flops, total_images = 0.0, 0
    for batch in batches:
        images = []
        total_flops += training_step_flops(lambda: images.append(step_fn(model, batch)))
        total_images += images[0]
        model.zero_grad(set_to_none=True)
    return total_flops / max(1, total_images)


def detection_step(model, batch) -> int:
    """One training step of a model that takes ``(images, targets)`` and returns a loss dict."""
    images, targets = batch
    sum(model(images, targets).values()).backward()
    return len(images)
