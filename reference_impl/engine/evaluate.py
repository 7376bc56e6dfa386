"""Inference over a COCO split: predictions as COCO results json, and pycocotools' bbox/segm mAP."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def predict(model, dataset, *, device, batch_size: int = 2, mask_threshold: float = 0.5) -> list[dict]:
    """COCO-format results (bbox in xywh, segmentation as RLE) for every image of ``dataset``."""
    from pycocotools import mask as mask_utils

    model.eval()
    results = []
    cat_ids = dataset.cat_ids
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([im.to(device) for im, _ in items])
        for (_, target), out in zip(items, outputs):
            boxes = out["boxes"].cpu()
            boxes[:, 2:] -= boxes[:, :2]
            masks = (out["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8) if "masks" in out else None
            for j in range(len(boxes)):
                r = {
                    "image_id": target["image_id"],
                    "category_id": cat_ids[int(out["labels"][j]) - 1],
                    "bbox": [round(float(v), 2) for v in boxes[j]],
                    "score": round(float(out["scores"][j]), 5),
                }
                if masks is not None:
                    rle = mask_utils.encode(np.asfortranarray(masks[j]))
                    rle["counts"] = rle["counts"].decode("ascii")
                    r["segmentation"] = rle
                results.append(r)
    return results


def export_predictions(results: list[dict], path: str | Path) -> None:
    from mrcnn_bench.harness.results import atomic_write_text

    atomic_write_text(path, json.dumps(results))


def coco_map(coco_gt, results: list[dict], iou_types=("bbox", "segm")) -> dict:
    """AP (IoU 0.50:0.95) and AP50 per IoU type, from pycocotools' COCOeval."""
    from pycocotools.cocoeval import COCOeval

    out = {}
    for iou_type in iou_types:
        if not results:
            out[iou_type] = {"AP": 0.0, "AP50": 0.0}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
    return out
