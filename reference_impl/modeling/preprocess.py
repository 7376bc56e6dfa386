"""Normalisation and resizing of input images (and their targets), then batching.

Resizing follows the Detectron rule torchvision implements: scale the shorter side to ``min_size``
unless the longer side would exceed ``max_size``; bilinear for images, nearest for masks. With
several training sizes, one is drawn per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..structures import ImageList, resize_boxes


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
    ):
        super().__init__()
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
    def from_config(cls, cfg) -> "Preprocessor":
        i = cfg.input
        return cls(
            min_size_train=i.min_size_train,
            max_size_train=i.max_size_train,
            min_size_test=i.min_size_test,
            max_size_test=i.max_size_test,
            pixel_mean=i.pixel_mean,
            pixel_std=i.pixel_std,
            size_divisibility=i.size_divisibility,
        )

    def _target_size(self) -> tuple[float, float]:
        if not self.training:
            return float(self.min_size_test), float(self.max_size_test)
        # one draw per image from the global generator (the same stream torchvision's transform uses)
        k = int(torch.empty(1).uniform_(0.0, float(len(self.min_size_train))).item())
        return float(self.min_size_train[k]), float(self.max_size_train)

    def _resize(self, image: torch.Tensor, target: dict | None):
        h, w = image.shape[-2:]
        min_size, max_size = self._target_size()
        shape = torch.tensor(image.shape[-2:])
        scale = torch.min(min_size / torch.min(shape).to(torch.float32), max_size / torch.max(shape).to(torch.float32)).item()
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)[0]
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[:, None].float(), scale_factor=scale, recompute_scale_factor=True)[:, 0].byte()
        return image, target

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> tuple[ImageList, list[dict] | None]:
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dtype == torch.uint8:
                image = image.float().div_(255.0)
            image = (image - self.pixel_mean) / self.pixel_std
            image, target = self._resize(image, targets[i] if targets is not None else None)
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        return ImageList.from_tensors(out_images, self.size_divisibility, self.channels_last), out_targets
