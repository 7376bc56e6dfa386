"""The run's shared initial weights: one seeded initialisation of the whole Mask R-CNN, in torchvision's
layout, that every implementation converts to its own names and loads (``model.init_weights``).

Made by the reference implementation's model under ``torch.manual_seed(benchmark.seed)`` (its
initialisers: Kaiming for the ResNet, Kaiming-uniform for the FPN, N(0, 0.01) for the RPN head and the
classifiers), then with ``model.weights`` laid over it when given: a whole torchvision Mask R-CNN, or an
ImageNet ResNet-50 in torchvision's format (its ``fc`` left out) for the backbone. Without weights, every
norm layer's running statistics are calibrated on the first ``model.backbone.calibration_images``
training images of the run's data (``calibrate_norm_statistics``), so the canonical FrozenBN with the
stem and res2 frozen trains from it as it does from ImageNet's statistics. The file is cached by what
determines it (the model, the seed, the weights' file, the data and the input sizes), so every run of one
scenario starts from the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class WeightsError(ValueError):
    """A checkpoint that cannot be laid over the initialisation (the message names the parameter)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("MRCNN_BENCH_INIT", Path.home() / ".cache" / "mrcnn-bench" / "init"))


def file_stamp(path: str | None) -> list | None:
    """What a cache key holds of a file it depends on: its resolved path, size and modification time."""
    if not path:
        return None
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _key(cfg, num_classes: int, paths=None) -> str:
    stamp = file_stamp(cfg.model.weights)
    model = cfg.model.model_dump(
        mode="json", exclude={"init_weights", "num_classes"}
    )  # the classes: num_classes
    key = {
        "model": model,
        "num_classes": num_classes,
        "seed": cfg.benchmark.seed,
        "weights": stamp,
        "init": INIT_VERSION,
    }
    if cfg.model.calibrates_norm:  # the statistics depend on the images and the sizes they are read at
        paths = paths or _data_paths(cfg)
        key["calibration"] = {
            "train": file_stamp(str(paths.train_json)),
            "images": str(paths.train_images),
            "input": cfg.input.model_dump(mode="json"),
            "version": CALIBRATION_VERSION,
        }
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


INIT_VERSION = (
    2  # bumped whenever the seeded initialisation draws other weights (2: detectron2's head initialisation)
)
CALIBRATION_VERSION = (
    1  # bumped whenever the calibration computes other statistics (the cache is keyed by it)
)


def _data_paths(cfg):
    from ..data.datasets import resolve_data

    return resolve_data(cfg.data)[0]


def calibration_batch(cfg, paths, model):
    """The first ``calibration_images`` training images of ``paths`` (in id order, those without an
    annotation left out as training leaves them out), each normalised and resized as the model's
    preprocessing does for training (with several training sizes, image i at size i modulo their count),
    then cropped from the top-left to the sides they all have, as one batch [N, 3, H, W]: the calibration
    measures each layer over the whole batch at once (exact for the frozen network, where images
    measured one at a time would each see the earlier layers' statistics before they were final)."""
    import torch
    from mrcnn_bench.reference_impl.data.coco import COCOInstances

    dataset = COCOInstances(
        paths.train_json,
        paths.train_images,
        filter_empty=cfg.input.filter_empty_annotations,
        with_masks=False,
    )
    if not len(dataset):
        raise WeightsError(
            f"{paths.train_json}: no training image with an annotation to calibrate the norm statistics on"
        )
    sizes, pre = cfg.input.min_size_train, model.preprocess
    images = [
        pre.resized(
            pre.normalized(dataset[i][0]), float(sizes[i % len(sizes)]), float(cfg.input.max_size_train)
        )
        for i in range(min(cfg.model.backbone.calibration_images, len(dataset)))
    ]
    h, w = min(im.shape[-2] for im in images), min(im.shape[-1] for im in images)
    return torch.stack([im[:, :h, :w] for im in images])


def overlay(init: dict, checkpoint: dict, source: str) -> dict:
    """``init`` with a torchvision-format checkpoint laid over it: every checkpoint tensor must name a
    parameter of the model with the same shape (a whole Mask R-CNN, or a ResNet-50 for the backbone)."""
    checkpoint = checkpoint.get("model", checkpoint)
    whole = any(k.startswith("backbone.") for k in checkpoint)
    out = dict(init)
    for key, value in checkpoint.items():
        if key.endswith("num_batches_tracked") or (not whole and key.startswith("fc.")):
            continue
        name = key if whole else f"backbone.body.{key}"
        if name not in init:
            raise WeightsError(
                f"{source}: '{key}' is not a parameter of Mask R-CNN R-50-FPN in torchvision's layout"
            )
        if tuple(init[name].shape) != tuple(value.shape):
            raise WeightsError(
                f"{source}: '{key}' has shape {tuple(value.shape)}, the model's is {tuple(init[name].shape)}"
            )
        out[name] = value.to(init[name].dtype)
    return out


def make_initial_weights(cfg, num_classes: int, paths=None) -> dict:
    """The state dict (torchvision's layout) of the seeded initialisation, with ``model.weights`` over it,
    or without weights its norm statistics calibrated on the training images of ``paths`` (default: the
    config's data)."""
    import torch
    from mrcnn_bench.reference_impl.config import ReferenceConfig
    from mrcnn_bench.reference_impl.modeling import (
        MaskRCNN,
        calibrate_norm_statistics,
        to_torchvision_state_dict,
    )

    torch.manual_seed(cfg.benchmark.seed)
    model = MaskRCNN.from_config(ReferenceConfig.from_canonical(cfg, num_classes))
    if cfg.model.calibrates_norm:
        calibrate_norm_statistics(
            model.backbone.body, calibration_batch(cfg, paths or _data_paths(cfg), model)
        )
    state = {k: v.detach().clone() for k, v in to_torchvision_state_dict(model.state_dict()).items()}
    if cfg.model.weights:
        try:
            checkpoint = torch.load(cfg.model.weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is bad input, with the reason
            raise WeightsError(
                f"{cfg.model.weights}: cannot read the checkpoint (model.weights): {type(e).__name__}: {e}"
            ) from None
        state = overlay(state, checkpoint, cfg.model.weights)
    return state


def initial_weights(
    cfg, num_classes: int, cache_dir: str | os.PathLike | None = None, paths=None
) -> tuple[Path, str]:
    """(path, sha256) of the shared initial weights for ``cfg`` and ``num_classes`` (calibrated on the
    training images of ``paths``, default the config's data), made once and cached (written atomically:
    a reader never sees half a file)."""
    import torch

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = (
        cache
        / f"mask_rcnn_R_50_FPN-{num_classes}cls-seed{cfg.benchmark.seed}-{_key(cfg, num_classes, paths)}.pth"
    )
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(make_initial_weights(cfg, num_classes, paths), tmp)
        os.replace(tmp, path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return path, digest.hexdigest()


def with_shared_init(cfg, paths) -> tuple[object, str | None]:
    """(``cfg`` with ``model.init_weights`` naming the run's shared initialisation, a line saying so) when
    ``benchmark.shared_init`` is on and no file is named already; else (``cfg``, None)."""
    from ..data.datasets import num_classes

    if cfg.model.init_weights:
        if not Path(cfg.model.init_weights).is_file():
            raise WeightsError(f"model.init_weights: {cfg.model.init_weights}: no such file")
        return cfg, None
    if not cfg.benchmark.shared_init:
        return cfg, None
    classes = num_classes(cfg, paths)
    path, sha = initial_weights(cfg, classes, paths=paths)
    origin = (
        f"with {cfg.model.weights}"
        if cfg.model.weights
        else f"norm statistics calibrated on {cfg.model.backbone.calibration_images} training images"
    )
    message = (
        f"initial weights: one seeded initialisation for every implementation ({classes} classes, seed "
        f"{cfg.benchmark.seed}, "
        f"{origin}): {path} (sha256 {sha[:12]})"
    )
    return cfg.with_overrides({"model.init_weights": str(path)}, source="shared initial weights"), message
