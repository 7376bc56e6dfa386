"""Inference over a COCO split: predictions as COCO results json, and pycocotools' bbox/segm mAP (the
conversion and the scoring are the harness's, harness/inference.py, which every implementation uses)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mrcnn_bench.harness.inference import coco_ap as coco_map
from mrcnn_bench.harness.inference import coco_results


@torch.no_grad()
def predict(model, dataset, *, device, batch_size: int = 2) -> list[dict]:
    """COCO-format results (bbox in xywh, segmentation as RLE) for every image of ``dataset``."""
    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([im.to(device) for im, _ in items])
        flat = [{**out, "masks": out["masks"][:, 0]} if "masks" in out else out for out in outputs]
        results += coco_results(flat, [target["image_id"] for _, target in items], dataset.cat_ids)
    return results


def export_predictions(results: list[dict], path: str | Path) -> None:
    from mrcnn_bench.harness.results import atomic_write_text

    atomic_write_text(path, json.dumps(results))


__all__ = ["predict", "export_predictions", "coco_map"]
