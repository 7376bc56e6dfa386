"""Normalisation and resizing of input images (and their targets), then batching.

Resizing follows the Detectron rule: scale the shorter side to ``min_size`` unless the longer side
would exceed ``max_size``, the scale in float64; the resized sides are rounded to the nearest pixel
(detectron2, mmdet) or floored (torchvision), ``resize_rounding``. Bilinear for images, nearest for
masks, polygons scaled by the same ratios. With several training sizes, one is drawn per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..structures import ImageList, resize_boxes, scale_polygons


class Preprocessor(nn.Module):
    def __init__(
        self,
        *,
        min_size_train: tuple[int, ...],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        size_divisibility: int = 32,
        resize_rounding: str = "round",
    ):
        super().__init__()
        if resize_rounding not in ("round", "floor"):
            raise ValueError(f"resize_rounding {resize_rounding!r}: expected 'round' or 'floor'")
        self.resize_rounding = resize_rounding
        self.min_size_train, self.max_size_train = tuple(min_size_train), max_size_train
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.size_divisibility = size_divisibility
        # Images arrive in [0, 1] (float) or [0, 255] (uint8); statistics are on the 0-255 scale.
        # (scaled in float64 first: 123.675 / 255 rounds to the same float32 as 0.485)
        mean = (torch.tensor(pixel_mean, dtype=torch.float64) / 255.0).float()
        std = (torch.tensor(pixel_std, dtype=torch.float64) / 255.0).float()
        self.register_buffer("pixel_mean", mean.view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(-1, 1, 1), persistent=False)
        self.channels_last = False

    @classmethod
    def from_config(cls, cfg) -> Preprocessor:
        i = cfg.input
        return cls(
            min_size_train=i.min_size_train,
            max_size_train=i.max_size_train,
            min_size_test=i.min_size_test,
            max_size_test=i.max_size_test,
            pixel_mean=i.pixel_mean,
            pixel_std=i.pixel_std,
            size_divisibility=i.size_divisibility,
            resize_rounding=i.resize_rounding,
        )

    def _target_size(self) -> tuple[float, float]:
        if not self.training:
            return float(self.min_size_test), float(self.max_size_test)
        # one draw per image from the global generator (the same stream torchvision's transform uses)
        k = int(torch.empty(1).uniform_(0.0, float(len(self.min_size_train))).item())
        return float(self.min_size_train[k]), float(self.max_size_train)

    def resized_size(self, h: int, w: int, min_size: float, max_size: float) -> tuple[int, int]:
        """The (h, w) an image of (h, w) is resized to: the scale in float64 (a float32 scale turns
        154 x 192 at 192 into 191 rows), the sides rounded or floored."""
        scale = min(min_size / min(h, w), max_size / max(h, w))
        if self.resize_rounding == "floor":
            return int(h * scale), int(w * scale)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def normalized(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] -> the float image the backbone reads (mean and std removed)."""
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        return (image - self.pixel_mean) / self.pixel_std

    def resized(self, image: torch.Tensor, min_size: float, max_size: float) -> torch.Tensor:
        """A [C, H, W] image resized by the Detectron rule (bilinear)."""
        size = self.resized_size(*image.shape[-2:], min_size, max_size)
        # an explicit size samples as scale_factor with recompute_scale_factor=True does for that size
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def _resize(self, image: torch.Tensor, target: dict | None):
        h, w = image.shape[-2:]
        image = self.resized(image, *self._target_size())
        size = tuple(image.shape[-2:])
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
        if "masks" in target:
            target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        if "polygons" in target:
            target["polygons"] = scale_polygons(target["polygons"], size[1] / w, size[0] / h)
        return image, target

    def forward(
        self, images: list[torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[ImageList, list[dict] | None]:
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            image, target = self._resize(self.normalized(image), targets[i] if targets is not None else None)
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        return ImageList.from_tensors(out_images, self.size_divisibility, self.channels_last), out_targets
