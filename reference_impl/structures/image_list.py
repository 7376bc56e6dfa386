"""A batch of differently sized images padded into one tensor, with each image's own size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ImageList:
    tensor: torch.Tensor  # [N, C, H, W], zero-padded at the bottom and right
    image_sizes: list[tuple[int, int]]  # (h, w) of each image before padding

    @classmethod
    def from_tensors(
        cls, images: list[torch.Tensor], size_divisibility: int = 32, channels_last: bool = False
    ) -> ImageList:
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
            max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        batch = (
            images[0]
            .new_zeros((len(images), images[0].shape[0], max_h, max_w))
            .contiguous(memory_format=memory_format)
        )
        for dst, im in zip(batch, images):
            dst[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        return cls(batch, sizes)
