"""COCO loading for the reference implementation (pycocotools), an infinite sharded sampler, and a
collate that keeps images as uint8 (the model converts them on the device: 4x fewer bytes to copy)."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..structures import flip_polygons, usable_polygons


def read_file(path: Path) -> bytes:
    """An image file's bytes: the loader's one file-system read per image."""
    with open(path, "rb") as f:
        return f.read()


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB [3, H, W] (PIL)."""
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


class COCOInstances(torch.utils.data.Dataset):
    """One item: (uint8 image [3, H, W], {"boxes", "labels", "masks" or "polygons", "image_id"}).

    Crowd annotations are skipped, labels are contiguous (1..num_classes, in category-id order),
    and images without a usable annotation are dropped when ``filter_empty``. ``mask_format``
    "bitmask": full-image 0/1 masks [K, H, W]; "polygon": per instance its polygons
    (structures/masks.py), what the ``polygon`` mask target rasterises inside each RoI.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_dir: str | Path,
        *,
        flip_prob: float = 0.0,
        filter_empty: bool = True,
        with_masks: bool = True,
        mask_format: str = "bitmask",
    ):
        if mask_format not in ("bitmask", "polygon"):
            raise ValueError(f"mask_format {mask_format!r}: expected 'bitmask' or 'polygon'")
        self.mask_format = mask_format
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(json_file))
        self.image_dir = Path(image_dir)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids
        self.flip_prob, self.with_masks = flip_prob, with_masks

    def _polygons(self, ann: dict) -> list[np.ndarray]:
        segmentation = ann.get("segmentation")
        if not isinstance(segmentation, list):
            raise ValueError(
                f"annotation {ann.get('id')} (image {ann.get('image_id')}): its segmentation is not a "
                "polygon list "
                "(RLE?), which the 'polygon' mask target cannot rasterise; use model.roi_heads.mask_target "
                "bitmask_binarized"
            )
        return usable_polygons(segmentation)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = decode_image(read_file(self.image_dir / self.coco.imgs[image_id]["file_name"]))
        h, w = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)[keep],
            "image_id": image_id,
        }
        if self.with_masks and self.mask_format == "polygon":
            target["polygons"] = [self._polygons(a) for a, k in zip(anns, keep.tolist()) if k]
        elif self.with_masks:
            masks = (
                np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
            )
            target["masks"] = torch.from_numpy(masks)[keep]
        if self.flip_prob > 0 and torch.rand(1).item() < self.flip_prob:
            image = image.flip(-1)
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
            if "polygons" in target:
                target["polygons"] = flip_polygons(target["polygons"], w)
        return image, target


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled indices, the same permutation on every rank, each rank taking its share."""

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle

    def _indices(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (
                torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            ).tolist()

    def __iter__(self):
        return itertools.islice(self._indices(), self.rank, None, self.world_size)


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
    batch_sampler=None,
):
    """Endless batches: from ``batch_sampler`` (lists of dataset indices) when given, else shuffled by
    an :class:`InfiniteSampler`."""
    if len(dataset) < batch_size * world_size:
        raise ValueError(
            f"{len(dataset)} training images cannot fill one batch of {batch_size} x {world_size} processes"
        )
    g = torch.Generator().manual_seed(seed + rank)
    if batch_sampler is None:
        sampling = dict(
            batch_size=batch_size,
            drop_last=True,
            sampler=InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size),
        )
    else:
        sampling = dict(batch_sampler=batch_sampler)
    return torch.utils.data.DataLoader(
        dataset,
        **sampling,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_seed_worker,
        generator=g,
    )
