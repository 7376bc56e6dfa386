"""Helpers shared by adapters (not an adapter itself: the registry skips this module)."""
from __future__ import annotations

import json


# info.* parity values several adapters report: one spelling, so the table compares them equal
PYTORCH_STYLE = "pytorch (stride in the 3x3 conv)"
CAFFE_STYLE = "caffe (stride in the 1x1 conv)"
LOW_QUALITY_ANY_IOU = "best anchor per box, any IoU"


def pillow_linear_alias() -> bool:
    """Pillow >= 10 removed ``Image.LINEAR``, a default argument in detectron2 v0.6's transforms: alias
    BILINEAR (the same filter). Needed by detectron2, and by mmdet when detectron2 is installed beside it
    (mmdet's d2_wrapper imports detectron2). True when the alias was added."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def num_classes(cfg, data) -> int:
    """Foreground classes: the config's, else the training set's categories, else COCO's 80."""
    if cfg.model.num_classes is not None:
        return cfg.model.num_classes
    if data is None:
        return 80
    return len(json.loads(data.train_json.read_text())["categories"])


def data_spec(cfg, data) -> dict:
    """How an implementation's own loader reads the training set (for loops written here)."""
    return dict(
        train_json=str(data.train_json) if data else None,
        train_images=str(data.train_images) if data else None,
        horizontal_flip_prob=cfg.input.horizontal_flip_prob,
        filter_empty=cfg.input.filter_empty_annotations,
        batch_size_per_process=cfg.ims_per_gpu,
        num_workers=cfg.benchmark.num_workers,
    )


def train_spec(cfg) -> dict:
    """The benchmark's switches a training loop written here honours."""
    b = cfg.benchmark
    return dict(dtype=b.dtype, channels_last=b.channels_last, grad_accum=b.grad_accum, iters=b.iters, seed=b.seed)
