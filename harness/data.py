"""Data sets: COCO 2017 from a path, or the embedded synthetic COCO-format set made here.

The synthetic set is deterministic for a given (images, size, seed): coloured shapes of several
categories on a textured background, each with a polygon mask, written as JPEG images plus
``annotations/instances_{split}.json`` in COCO's own layout, so every implementation reads it with
its own COCO loader.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CATEGORIES = ["rectangle", "ellipse", "triangle", "star", "hexagon", "diamond"]


class DataError(ValueError):
    """A data set that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class DataPaths:
    root: Path
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_root(cls, root: str | os.PathLike, train_split: str = "train2017", val_split: str = "val2017"):
        root = Path(root)
        ann = root / "annotations"
        return cls(
            root=root,
            train_json=ann / f"instances_{train_split}.json",
            train_images=root / train_split,
            val_json=ann / f"instances_{val_split}.json",
            val_images=root / val_split,
        )


def _shape_polygon(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred at (cx, cy) with half-extents (rx, ry), rotated by angle."""
    if kind == "rectangle":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == "ellipse":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif kind == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif kind == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            t = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(t), r * math.sin(t)))
    elif kind == "hexagon":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    elif kind == "diamond":
        pts = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    else:
        raise ValueError(kind)
    p = np.asarray(pts, dtype=np.float64) * np.array([rx, ry])
    c, s = math.cos(angle), math.sin(angle)
    p = p @ np.array([[c, s], [-s, c]])
    return p + np.array([cx, cy])


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _make_image(rng: np.random.Generator, width: int, height: int):
    from PIL import Image, ImageDraw

    # A smooth colour gradient plus noise: not a flat background the model can trivially separate.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    img = base + xx[..., None] / width * slope[0] + yy[..., None] / height * slope[1]
    img += rng.normal(0, 12, size=img.shape)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    objects = []
    boxes = []
    n_target = int(rng.integers(1, 7))
    for _ in range(n_target * 10):
        if len(objects) == n_target:
            break
        kind_id = int(rng.integers(len(CATEGORIES)))
        scale = min(width, height)
        rx = rng.uniform(0.06, 0.22) * scale
        ry = rx * rng.uniform(0.6, 1.4)
        r = max(rx, ry)
        if 2 * r + 2 >= min(width, height):
            continue
        cx = rng.uniform(r + 1, width - r - 1)
        cy = rng.uniform(r + 1, height - r - 1)
        poly = _shape_polygon(CATEGORIES[kind_id], cx, cy, rx, ry, rng.uniform(0, math.pi))
        poly[:, 0] = np.clip(poly[:, 0], 0, width - 1)
        poly[:, 1] = np.clip(poly[:, 1], 0, height - 1)
        box = (poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max())
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if any(_iou(box, b) > 0.1 for b in boxes):
            continue  # keep instances mostly unoccluded so masks equal what is visible
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon([tuple(p) for p in poly.tolist()], fill=color)
        boxes.append(box)
        objects.append((kind_id, poly))
    return image, objects


def _write_split(out: Path, split: str, count: int, size: int, seed: int, id_offset: int) -> dict:
    from pycocotools import mask as mask_utils

    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(count):
        image_id = id_offset + i + 1
        # One generator per image: any image can be regenerated alone, and the set does not depend on
        # the order of generation.
        rng = np.random.default_rng([seed, image_id])
        width = size
        height = int(rng.choice([size, (size * 3) // 4]))
        image, objects = _make_image(rng, width, height)
        file_name = f"{image_id:012d}.jpg"
        image.save(img_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for kind_id, poly in objects:
            flat = [round(float(v), 2) for v in poly.reshape(-1)]
            rle = mask_utils.frPyObjects([flat], height, width)
            area = float(mask_utils.area(mask_utils.merge(rle)))
            x0, y0 = float(poly[:, 0].min()), float(poly[:, 1].min())
            w, h = float(poly[:, 0].max()) - x0, float(poly[:, 1].max()) - y0
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": kind_id + 1,
                    "segmentation": [flat],
                    "area": area,
                    "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return {
        "info": {"description": f"mrcnn-bench synthetic shapes ({split})", "version": "1", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)],
    }


def make_synthetic(
    out: str | os.PathLike,
    images: int = 64,
    size: int = 256,
    seed: int = 0,
    val_images: int | None = None,
    train_split: str = "train2017",
    val_split: str = "val2017",
) -> DataPaths:
    """Write a synthetic COCO-format set to ``out`` (created atomically: a failure leaves nothing)."""
    if images <= 0:
        raise DataError(f"--images must be > 0, got {images}")
    if size < 32:
        raise DataError(f"--size must be >= 32 pixels, got {size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; choose another --out or remove it")
    val_images = val_images if val_images is not None else max(4, images // 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "annotations").mkdir()
        for split, count, offset in ((train_split, images, 0), (val_split, val_images, 1_000_000)):
            coco = _write_split(tmp, split, count, size, seed, offset)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (tmp / "SYNTHETIC").write_text(json.dumps({"images": images, "size": size, "seed": seed}) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DataPaths.from_root(out, train_split, val_split)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MRCNN_BENCH_DATA", Path.home() / ".cache" / "mrcnn-bench" / "data"))


def synthetic_for(data_cfg, cache_dir: str | os.PathLike | None = None) -> DataPaths:
    """The synthetic set the config describes, generated once and reused."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / f"synth-n{data_cfg.synth_images}-s{data_cfg.synth_size}-seed{data_cfg.synth_seed}"
    if not (root / "SYNTHETIC").is_file():
        if root.exists():
            shutil.rmtree(root)
        make_synthetic(
            root,
            data_cfg.synth_images,
            data_cfg.synth_size,
            data_cfg.synth_seed,
            train_split=data_cfg.train_split,
            val_split=data_cfg.val_split,
        )
    return DataPaths.from_root(root, data_cfg.train_split, data_cfg.val_split)


def check_coco_split(json_path: Path, image_dir: Path, need_annotations: bool = True) -> dict:
    """Validate one COCO split; returns the summary. Raises DataError naming the file and the problem."""
    if not json_path.is_file():
        raise DataError(f"{json_path}: annotation file not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found (listed by {json_path})")
    try:
        coco = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path}: not valid JSON (truncated or corrupt?): {e}") from None
    if not isinstance(coco, dict):
        raise DataError(f"{json_path}: expected a COCO object at the top level, got {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{json_path}: key '{key}' missing or not a list (expected COCO instances format)")
    if not coco["images"]:
        raise DataError(f"{json_path}: key 'images' is empty")
    if not coco["categories"]:
        raise DataError(f"{json_path}: key 'categories' is empty")
    if need_annotations and not coco["annotations"]:
        raise DataError(f"{json_path}: key 'annotations' is empty: nothing to train on")
    missing = [im.get("file_name") for im in coco["images"] if not (image_dir / str(im.get("file_name"))).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{json_path}: {len(missing)} image(s) listed under 'images' are absent from {image_dir}: {shown}")
    return {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]),
    }


def resolve_data(data_cfg, data_arg: str | None = None) -> tuple[DataPaths, dict]:
    """The data set a run uses (``--data`` beats the config; neither = synthetic), validated."""
    root = data_arg or data_cfg.root
    if root is None:
        paths = synthetic_for(data_cfg)
        kind = "synthetic"
    else:
        if not Path(root).is_dir():
            raise DataError(f"{root}: data directory not found (expected annotations/ and {data_cfg.train_split}/)")
        paths = DataPaths.from_root(root, data_cfg.train_split, data_cfg.val_split)
        kind = "synthetic" if (Path(root) / "SYNTHETIC").is_file() else "coco"
    summary = {"kind": kind, "train": check_coco_split(paths.train_json, paths.train_images)}
    if paths.val_json.is_file():
        summary["val"] = check_coco_split(paths.val_json, paths.val_images, need_annotations=False)
    return paths, summary
