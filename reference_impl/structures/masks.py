"""Mask targets: a positive RoI's ground-truth mask as the mask head's M x M target.

Three rules, as the frameworks make them (``model.roi_heads.mask_target``):

- ``polygon``: the ground truth's polygons, moved into the RoI's frame and rasterised at M x M
  (Detectron's and detectron2's default). Exact at any object size; a host step per RoI.
- ``bitmask_binarized``: the full-image bitmask cropped with aligned RoIAlign and thresholded at
  0.5 (mmdet's default, detectron2's ``INPUT.MASK_FORMAT: bitmask``).
- ``bitmask_soft``: the bitmask cropped with legacy (unaligned) RoIAlign, kept as fractions
  (torchvision's ``project_masks_on_boxes``).

Polygons are per instance a list of flat float arrays ``[x0, y0, x1, y1, ...]`` in image pixels.
"""

from __future__ import annotations

import numpy as np
import torch

MASK_TARGETS = ("polygon", "bitmask_binarized", "bitmask_soft")


def usable_polygons(segmentation) -> list[np.ndarray]:
    """A COCO polygon segmentation as float64 arrays, less the parts of fewer than 3 points."""
    return [np.asarray(p, dtype=np.float64) for p in segmentation if len(p) >= 6]


def _mapped(
    polygons: list[list[np.ndarray]], sx: float, sy: float, tx: float = 0.0
) -> list[list[np.ndarray]]:
    """Every polygon of every instance with x -> sx * x + tx and y -> sy * y (new arrays)."""
    out = []
    for instance in polygons:
        mapped = []
        for p in instance:
            q = p.copy()
            q[0::2] = q[0::2] * sx + tx
            q[1::2] *= sy
            mapped.append(q)
        out.append(mapped)
    return out


def scale_polygons(polygons: list[list[np.ndarray]], sx: float, sy: float) -> list[list[np.ndarray]]:
    """Every polygon of every instance with x scaled by ``sx`` and y by ``sy``."""
    return _mapped(polygons, sx, sy)


def flip_polygons(polygons: list[list[np.ndarray]], width: int) -> list[list[np.ndarray]]:
    """Mirrored left-right in an image ``width`` pixels wide (x -> width - x), as the boxes are."""
    return _mapped(polygons, -1.0, 1.0, float(width))


def rasterize_in_box(instance: list[np.ndarray], box, size: int) -> np.ndarray:
    """The instance's polygons inside ``box`` (x1, y1, x2, y2) as a ``size`` x ``size`` 0/1 array: each
    point moved to the box's corner and scaled by size / side (sides under 0.1 px taken as 0.1)."""
    from pycocotools import mask as mask_util

    x1, y1, x2, y2 = (float(v) for v in box)
    sx, sy = size / max(x2 - x1, 0.1), size / max(y2 - y1, 0.1)
    moved = []
    for p in instance:
        q = p.copy()
        q[0::2] = (q[0::2] - x1) * sx
        q[1::2] = (q[1::2] - y1) * sy
        moved.append(q.tolist())
    if not moved:
        return np.zeros((size, size), dtype=np.uint8)
    rle = mask_util.merge(mask_util.frPyObjects(moved, size, size))
    return mask_util.decode(rle)


def mask_targets(
    rule: str, target: dict, boxes: torch.Tensor, matched: torch.Tensor, size: int, roi_align
) -> torch.Tensor:
    """[K, size, size] float targets of one image's K positive ``boxes`` whose ground truth is
    ``matched`` (indices into ``target``'s instances), by ``rule``; ``roi_align`` is the op
    (input, rois, output_size, spatial_scale, sampling_ratio, aligned)."""
    if rule == "polygon":
        if "polygons" not in target:
            raise KeyError(
                "mask_target 'polygon' needs the targets' 'polygons' (COCOInstances(mask_format='polygon'))"
            )
        polygons = target["polygons"]
        rows = [rasterize_in_box(polygons[g], b, size) for g, b in zip(matched.tolist(), boxes.tolist())]
        stacked = np.stack(rows) if rows else np.zeros((0, size, size), dtype=np.uint8)
        return torch.from_numpy(stacked).to(device=boxes.device, dtype=boxes.dtype)
    if rule not in ("bitmask_binarized", "bitmask_soft"):
        raise ValueError(f"mask target rule {rule!r}: expected one of {', '.join(MASK_TARGETS)}")
    aligned = rule == "bitmask_binarized"
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], 1)
    crops = roi_align(target["masks"][:, None].to(boxes.dtype), rois, (size, size), 1.0, 0, aligned)[:, 0]
    return (crops >= 0.5).to(boxes.dtype) if aligned else crops
