"""The inference benchmark and the accuracy check: the same images through each framework's own eval path.

Every adapter gives a predictor (``Adapter.predictor``): decoded RGB images in, as uint8 tensors
[3, H, W] on the host, and per image the detections out, boxes at the image's size and masks pasted
at it. What the framework does in between (its copy to the device, resizing to the test size,
normalising, padding, the RPN, the box and mask heads, NMS, pasting) is its own eval path and is
what is timed.

- ``time_batches``: for each batch size, ``warmup`` untimed calls, then ``batches`` timed calls, each
  closed by a device synchronize; the images of the val split in turn, the same for every framework.
- ``latency_stats``: img/s and latency mean, p50, p90, p95, p99 (ms) per batch size.
- ``EmptyPath``: a timed call that returned no detection (or no mask) fails the run: a framework timed
  on an empty path skips the mask head and the pasting.
- ``coco_results`` / ``coco_ap``: detections as COCO results and pycocotools' bbox and segm AP.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Masks are binarised at this probability by every framework (detectron2's paste and mmdet's
# mask_thr_binary use the same 0.5; the harness applies it to the others' probabilities).
MASK_THRESHOLD = 0.5


class EmptyPath(RuntimeError):
    """A timed inference call returned no detection or no mask: the mask head never ran."""


def load_images(json_path: str | Path, image_dir: str | Path) -> list[tuple[int, object]]:
    """(image id, RGB uint8 tensor [3, H, W]) for every image of a COCO split, in id order."""
    import torch
    from PIL import Image

    with open(json_path) as f:
        entries = sorted(json.load(f)["images"], key=lambda e: e["id"])
    out = []
    for entry in entries:
        with Image.open(Path(image_dir) / entry["file_name"]) as im:
            array = np.asarray(im.convert("RGB"))
        out.append((entry["id"], torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()))
    return out


def count_outputs(outputs: list[dict]) -> tuple[int, int]:
    """(detections, masks with at least one pixel at or above the threshold) over a call's images."""
    detections = masks = 0
    for out in outputs:
        detections += int(len(out["boxes"]))
        m = out.get("masks")
        if m is not None and len(m):
            masks += int((m.reshape(len(m), -1) >= MASK_THRESHOLD).any(1).sum())
    return detections, masks


def _synchronize(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _peak_memory(device: str) -> tuple[Callable[[], None], Callable[[], float]]:
    """(reset, read) of the peak memory in MiB: the CUDA allocator's peak, reset per batch size; on the
    CPU the process's peak RSS, which cannot be reset (a peak so far)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.reset_peak_memory_stats, lambda: torch.cuda.max_memory_allocated() / 2**20
    from .timing import _cpu_peak_rss_mb

    return (lambda: None), _cpu_peak_rss_mb


def time_batches(
    predict,
    images: list,
    batch_sizes: list[int],
    warmup: int,
    batches: int,
    device: str,
    autocast_dtype=None,
    on_batch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per timed call: batch size, images, seconds, detections, masks, peak memory so far.
    The images are taken in turn (wrapping around) so that each call sees others."""
    import torch

    sync = _synchronize(device)
    reset_peak, read_peak = _peak_memory(device)
    autocast = (
        torch.autocast(torch.device(device).type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    rows, cursor = [], 0
    for size in batch_sizes:
        reset_peak()
        for call in range(warmup + batches):
            batch = [images[(cursor + k) % len(images)] for k in range(size)]
            cursor = (cursor + size) % len(images)
            sync()
            start = time.perf_counter()
            with torch.inference_mode(), autocast:
                outputs = predict(batch)
            sync()
            seconds = time.perf_counter() - start
            if call < warmup:
                continue
            detections, masks = count_outputs(outputs)
            row = {
                "iter": len(rows),
                "batch_size": size,
                "images": size,
                "duration": seconds,
                "detections": detections,
                "masks": masks,
                "max_memory_mb": read_peak(),
            }
            rows.append(row)
            if on_batch:
                on_batch(row)
    return rows


def check_not_empty(rows: list[dict], impl: str) -> None:
    """The timed calls of every batch size must have returned detections and masks, or the run is not a
    measurement (a single image with nothing on it is what that image holds; a batch size with nothing
    at all is a model that never reaches its mask head)."""
    for size in dict.fromkeys(r["batch_size"] for r in rows):
        mine = [r for r in rows if r["batch_size"] == size]
        detections, masks = sum(r["detections"] for r in mine), sum(r["masks"] for r in mine)
        if detections == 0 or masks == 0:
            raise EmptyPath(
                f"{impl}: the {len(mine)} timed calls of batch size {size} returned {detections} detections "
                f"and {masks} "
                "masks; a model with no detection above the score threshold skips the mask head and the "
                "pasting. "
                "Set benchmark.shared_training_iters, or model.weights to trained weights"
            )


def latency_stats(seconds: list[float], batch_size: int) -> dict:
    """img/s (images over the calls' summed seconds) and latency mean and percentiles in ms."""
    s = np.asarray(seconds, float)
    ms = s * 1e3
    return {
        "batch_size": batch_size,
        "calls": len(s),
        "images_per_s": batch_size * len(s) / float(s.sum()),
        "latency_ms_mean": float(ms.mean()),
        **{f"latency_ms_p{q}": float(np.percentile(ms, q)) for q in (50, 90, 95, 99)},
    }


def inference_summary(rows: list[dict]) -> dict:
    """run.json's summary of an inference run: per batch size its stats, detections and masks per image
    and peak memory; over all timed calls the fields every summary has (a window of the calls)."""
    per_size = {}
    for size in dict.fromkeys(r["batch_size"] for r in rows):
        mine = [r for r in rows if r["batch_size"] == size]
        images = sum(r["images"] for r in mine)
        per_size[str(size)] = {
            **latency_stats([r["duration"] for r in mine], size),
            "detections_per_image": sum(r["detections"] for r in mine) / images,
            "masks_per_image": sum(r["masks"] for r in mine) / images,
            "peak_memory_mb": max(
                (r["max_memory_mb"] for r in mine if r["max_memory_mb"] is not None), default=None
            ),
        }
    seconds = [r["duration"] for r in rows]
    images = sum(r["images"] for r in rows)
    return {
        "warmup": 0,
        "end": len(rows),
        "iterations": len(rows),
        "images": images,
        "seconds": float(sum(seconds)),
        "images_per_s": images / float(sum(seconds)),
        "s_per_iter_median": float(np.median(seconds)),
        "task": "infer",
        "batch_sizes": per_size,
    }


# ------------------------------------------------------------------------------------ accuracy
def coco_results(outputs: list[dict], image_ids: list[int], cat_ids: list[int]) -> list[dict]:
    """COCO results (bbox as x, y, w, h; segmentation as RLE) from predictor outputs; label k (1..K)
    is the k-th category by id."""
    from pycocotools import mask as mask_utils

    results = []
    for image_id, out in zip(image_ids, outputs):
        boxes = out["boxes"].detach().float().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        masks = out.get("masks")
        binary = (masks >= MASK_THRESHOLD).cpu().numpy().astype(np.uint8) if masks is not None else None
        for j in range(len(boxes)):
            r = {
                "image_id": int(image_id),
                "category_id": cat_ids[int(out["labels"][j]) - 1],
                "bbox": [round(float(v), 2) for v in boxes[j]],
                "score": round(float(out["scores"][j]), 5),
            }
            if binary is not None:
                rle = mask_utils.encode(np.asfortranarray(binary[j]))
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            results.append(r)
    return results


def coco_ap(coco_gt, results: list[dict], iou_types=("bbox", "segm")) -> dict:
    """AP (IoU 0.50:0.95) and AP50 per IoU type, from pycocotools' COCOeval; no results: 0."""
    from pycocotools.cocoeval import COCOeval

    out = {}
    for iou_type in iou_types:
        if not results:
            out[iou_type] = {"AP": 0.0, "AP50": 0.0}
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
    return out


def evaluate(predict, val_json: str | Path, val_images: str | Path, batch_size: int = 2) -> dict:
    """bbox and segm AP of ``predict`` on a COCO split, with the detections and masks per image."""
    import torch
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(val_json))
    cat_ids = sorted(coco.getCatIds())
    images = load_images(val_json, val_images)
    results, detections, masks = [], 0, 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        with torch.inference_mode():
            outputs = predict([im for _, im in chunk])
        d, m = count_outputs(outputs)
        detections, masks = detections + d, masks + m
        results += coco_results(outputs, [i for i, _ in chunk], cat_ids)
    return {
        **coco_ap(coco, results),
        "images": len(images),
        "detections_per_image": detections / max(1, len(images)),
        "masks_per_image": masks / max(1, len(images)),
    }
