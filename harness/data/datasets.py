"""Data sets: COCO 2017 from a path, or the embedded synthetic COCO-format set made here.

The synthetic set is deterministic for a given (images, size, seed) and shaped like COCO where the
model's work depends on it: COCO's 80 categories under their own (non-contiguous) ids, so the model is
the 81-class COCO Mask R-CNN; instances per image with COCO's mean (about 7) and a long tail, many of
them small; landscape and portrait images with COCO's proportions (640x480, 640x427, 480x640, ...,
the long side ``size``); some multi-part polygons and some crowd regions stored as RLE, as COCO has.
Each object is a coloured shape with a polygon mask over a textured background, written as JPEG
images plus ``annotations/instances_{split}.json`` in COCO's own layout, so every implementation reads
it with its own COCO loader.
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

from .check import DataError, default_cache_dir

# COCO 2017's 80 categories with their ids (1..90, with gaps, as in instances_*.json).
COCO_CATEGORIES = [
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
]
# Each category is drawn as one of these shapes, stretched and coloured its own way.
SHAPES = ["rectangle", "ellipse", "triangle", "star", "hexagon", "diamond"]
# COCO train2017's image proportions (short side / long side), most often 480/640 and 427/640.
ASPECTS = [0.75, 0.75, 0.75, 0.667, 0.667, 0.5625, 1.0, 0.8]
PORTRAIT_SHARE = 0.25  # COCO: about a quarter of the images are taller than wide
MEAN_INSTANCES = 7.0  # COCO train2017: 7.3 instances per image
CROWD_SHARE = 0.1  # images with one crowd region (COCO: about 1% of instances, in ~9% of images)
SYNTH_VERSION = 2  # bumped whenever the generator changes what it writes (the cache is keyed by it)
MULTIPART_SHARE = 0.1  # objects whose mask has two polygons (occluded in two pieces)


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


def _object_count(rng: np.random.Generator) -> int:
    """Instances in one image: 1 + negative binomial, mean ``MEAN_INSTANCES``, long-tailed like COCO's."""
    r = 1.2
    mean = MEAN_INSTANCES - 1
    return 1 + int(min(60, rng.negative_binomial(r, r / (r + mean))))


def _place(rng, width, height, boxes, rel_min, rel_max, max_iou):
    """A centre and half-extents for an object whose box overlaps no placed box by more than ``max_iou``."""
    scale = min(width, height)
    for _ in range(20):
        rx = scale * float(np.exp(rng.uniform(np.log(rel_min), np.log(rel_max))))  # many small, few large
        ry = rx * rng.uniform(0.6, 1.4)
        r = max(rx, ry)
        if 2 * r + 2 >= scale:
            continue
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        box = (cx - r, cy - r, cx + r, cy + r)
        if all(_iou(box, b) <= max_iou for b in boxes):
            return cx, cy, rx, ry
    return None


def _polygon(kind: str, cx, cy, rx, ry, angle, width, height) -> np.ndarray:
    poly = _shape_polygon(kind, cx, cy, rx, ry, angle)
    poly[:, 0] = np.clip(poly[:, 0], 0, width - 1)
    poly[:, 1] = np.clip(poly[:, 1], 0, height - 1)
    return poly


def _make_image(rng: np.random.Generator, width: int, height: int, categories: int = len(COCO_CATEGORIES)):
    """(image, objects, crowd) where objects are (category index, [polygons]) and crowd is None or a
    boolean mask of one crowd region (a cluster of small shapes, annotated as one RLE)."""
    from PIL import Image, ImageDraw

    # A smooth colour gradient plus noise: not a flat background the model can trivially separate.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    img = base + xx[..., None] / width * slope[0] + yy[..., None] / height * slope[1]
    img += rng.normal(0, 12, size=img.shape)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    boxes, objects, crowd = [], [], None
    if rng.uniform() < CROWD_SHARE:
        region = _place(rng, width, height, boxes, 0.15, 0.3, 0.0)
        if region is not None:
            cx, cy, rx, ry = region
            layer = Image.new("L", (width, height), 0)
            ldraw = ImageDraw.Draw(layer)
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            for _ in range(int(rng.integers(6, 14))):  # many small people-like blobs, one annotation
                px, py = cx + rng.uniform(-rx, rx), cy + rng.uniform(-ry, ry)
                blob = _polygon("ellipse", px, py, rx * 0.18, ry * 0.35, 0.0, width, height)
                points = [tuple(p) for p in blob.tolist()]
                draw.polygon(points, fill=color)
                ldraw.polygon(points, fill=1)
            crowd = np.asarray(layer, dtype=bool)
            boxes.append((cx - rx, cy - ry, cx + rx, cy + ry))

    for _ in range(_object_count(rng)):
        cat = int(rng.integers(categories))
        kind = SHAPES[cat % len(SHAPES)]
        stretch = 0.7 + 0.1 * ((cat // len(SHAPES)) % 7)  # categories of one shape differ in proportions
        placed = _place(rng, width, height, boxes, 0.03, 0.25, 0.0)
        if placed is None:
            continue  # the image is full
        cx, cy, rx, ry = placed
        angle = rng.uniform(0, math.pi)
        color = tuple(
            int(c)
            for c in (
                np.array([cat * 37 % 256, cat * 91 % 256, cat * 53 % 256]) + rng.integers(-20, 21, 3)
            ).clip(0, 255)
        )
        if rng.uniform() < MULTIPART_SHARE:  # two pieces with a gap between them
            dx = rx * 0.55
            polys = [
                _polygon(
                    kind,
                    cx + sign * dx * math.cos(angle),
                    cy + sign * dx * math.sin(angle),
                    rx * 0.4,
                    ry * stretch * 0.8,
                    angle,
                    width,
                    height,
                )
                for sign in (-1, 1)
            ]
        else:
            polys = [_polygon(kind, cx, cy, rx, ry * stretch, angle, width, height)]
        xs = np.concatenate([p[:, 0] for p in polys])
        ys = np.concatenate([p[:, 1] for p in polys])
        box = (xs.min(), ys.min(), xs.max(), ys.max())
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue
        for poly in polys:
            draw.polygon([tuple(p) for p in poly.tolist()], fill=color)
        boxes.append(box)
        objects.append((cat, polys))
    # Objects' boxes do not meet (nor the crowd's), so each polygon is exactly what is visible.
    return image, objects, crowd


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(width, height): the long side ``size``, COCO's proportions, a quarter of them portrait."""
    short = int(round(size * float(rng.choice(ASPECTS))))
    return (short, size) if rng.uniform() < PORTRAIT_SHARE else (size, short)


def _write_split(
    out: Path, split: str, count: int, size: int, seed: int, id_offset: int, categories: int
) -> dict:
    from pycocotools import mask as mask_utils

    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []

    def annotate(image_id, category_id, segmentation, mask, iscrowd):
        ys, xs = np.nonzero(mask)
        x0, y0 = float(xs.min()), float(ys.min())
        annotations.append(
            {
                "id": len(annotations) + 1 + id_offset,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
                "iscrowd": iscrowd,
            }
        )

    for i in range(count):
        image_id = id_offset + i + 1
        # One generator per image: any image can be regenerated alone, and the set does not depend on
        # the order of generation.
        rng = np.random.default_rng([seed, image_id])
        width, height = _image_size(rng, size)
        image, objects, crowd = _make_image(rng, width, height, categories)
        file_name = f"{image_id:012d}.jpg"
        image.save(img_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cat, polys in objects:
            flat = [[round(float(v), 2) for v in poly.reshape(-1)] for poly in polys]
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))).astype(
                bool
            )
            if mask.sum() < 4:
                continue
            annotate(image_id, COCO_CATEGORIES[cat][0], flat, mask, 0)
        if crowd is not None and crowd.sum() >= 16:
            annotate(
                image_id,
                COCO_CATEGORIES[0][0],
                {"counts": _uncompressed_counts(crowd), "size": [height, width]},
                crowd,
                1,
            )
    return {
        "info": {
            "description": f"mrcnn-bench synthetic COCO-like set ({split})",
            "version": str(SYNTH_VERSION),
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": SHAPES[i % len(SHAPES)]}
            for i, (cid, name) in enumerate(COCO_CATEGORIES[:categories])
        ],
    }


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a boolean mask (column-major runs, starting with zeros), as
    crowd annotations in instances_*.json store them."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def make_synthetic(
    out: str | os.PathLike,
    images: int = 64,
    size: int = 256,
    seed: int = 0,
    val_images: int | None = None,
    train_split: str = "train2017",
    val_split: str = "val2017",
    categories: int = len(COCO_CATEGORIES),
) -> DataPaths:
    """Write a synthetic COCO-format set to ``out`` (created atomically: a failure leaves nothing); its
    categories are COCO's first ``categories`` (all 80 by default: the model is COCO's)."""
    if images <= 0:
        raise DataError(f"--images must be > 0, got {images}")
    if not 1 <= categories <= len(COCO_CATEGORIES):
        raise DataError(f"--categories must be 1 to {len(COCO_CATEGORIES)} (COCO's), got {categories}")
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
            coco = _write_split(tmp, split, count, size, seed, offset, categories)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (tmp / "SYNTHETIC").write_text(
            json.dumps(
                {
                    "images": images,
                    "size": size,
                    "seed": seed,
                    "categories": categories,
                    "version": SYNTH_VERSION,
                }
            )
            + "\n"
        )
        try:
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except OSError:
            if not (out / "SYNTHETIC").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process (a second node) made the same set first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DataPaths.from_root(out, train_split, val_split)


def synthetic_for(data_cfg, cache_dir: str | os.PathLike | None = None) -> DataPaths:
    """The synthetic set the config describes, generated once and reused."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / (
        f"synth-v{SYNTH_VERSION}-n{data_cfg.synth_images}-s{data_cfg.synth_size}-seed{data_cfg.synth_seed}"
        + (f"-c{data_cfg.synth_categories}" if data_cfg.synth_categories != len(COCO_CATEGORIES) else "")
    )
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
            categories=data_cfg.synth_categories,
        )
    return DataPaths.from_root(root, data_cfg.train_split, data_cfg.val_split)


def check_coco_split(json_path: Path, image_dir: Path, need_annotations: bool = True) -> dict:
    """Validate one COCO split (harness/data/check.py); returns its summary. Raises DataError naming the
    file and the problem."""
    from .check import inspect_split

    return inspect_split(json_path, image_dir, need_annotations)[0]


def num_classes(cfg, paths: DataPaths | None) -> int:
    """Foreground classes of a run: the config's, else the training set's categories (from the split's
    index: no parse in a worker), else COCO's 80 (no data)."""
    from .check import index_of

    if cfg.model.num_classes is not None:
        return cfg.model.num_classes
    return index_of(paths.train_json)["categories"] if paths is not None else len(COCO_CATEGORIES)


def resolve_data(data_cfg, data_arg: str | None = None) -> tuple[DataPaths, dict]:
    """The data set a run uses (``--data`` beats the config; neither = synthetic), validated in one pass
    per split; the paths returned are those the frameworks read (a split with a few unusable
    annotations: its cleaned copy)."""
    import dataclasses

    from .check import inspect_split

    root = data_arg or data_cfg.root
    if root is None:
        paths = synthetic_for(data_cfg)
        kind = "synthetic"
    else:
        if not Path(root).is_dir():
            raise DataError(
                f"{root}: data directory not found (expected annotations/ and {data_cfg.train_split}/)"
            )
        paths = DataPaths.from_root(root, data_cfg.train_split, data_cfg.val_split)
        kind = "synthetic" if (Path(root) / "SYNTHETIC").is_file() else "coco"
    train, train_json = inspect_split(paths.train_json, paths.train_images, train=True)
    summary = {"kind": kind, "train": train}
    val_json = paths.val_json
    if paths.val_json.is_file():
        summary["val"], val_json = inspect_split(paths.val_json, paths.val_images, need_annotations=False)
    return dataclasses.replace(paths, train_json=train_json, val_json=val_json), summary


def describe_splits(paths: DataPaths) -> str:
    """A line per split: its images and instances, and its annotation file."""
    lines = []
    for split in ("train", "val"):
        path = getattr(paths, f"{split}_json")
        coco = json.loads(path.read_text())
        lines.append(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} instances -> {path}")
    return "\n".join(lines)
