"""Box utilities and the pieces that turn boxes into training targets: matcher and sampler."""
from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] -> [N, M]."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b - inter)


def nonempty(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of boxes whose width and height are both >= min_size."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def resize_boxes(boxes: torch.Tensor, original_size, new_size) -> torch.Tensor:
    """Scale boxes from an (h, w) image to a resized (h, w) one."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[0], dtype=torch.float32, device=boxes.device
    )
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[1], dtype=torch.float32, device=boxes.device
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


class Matcher:
    """Assigns each prediction (column) the ground truth (row) it overlaps most.

    Result per prediction: the matched row index, or ``BELOW_LOW`` (-1, background) when the best IoU
    is below ``low``, or ``BETWEEN`` (-2, ignored) when it is in [low, high). With
    ``allow_low_quality_matches``, each ground truth also keeps the predictions that overlap it best,
    whatever their IoU (Faster R-CNN's RPN rule).
    """

    BELOW_LOW = -1
    BETWEEN = -2

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool):
        if low > high:
            raise ValueError(f"low threshold {low} > high threshold {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches

    def __call__(self, quality: torch.Tensor) -> torch.Tensor:
        if quality.numel() == 0:
            raise ValueError("Matcher: no ground truth or no predictions")
        best, matches = quality.max(dim=0)
        original = matches.clone() if self.allow_low_quality_matches else None
        matches[best < self.low] = self.BELOW_LOW
        matches[(best >= self.low) & (best < self.high)] = self.BETWEEN
        if original is not None:
            best_per_gt, _ = quality.max(dim=1)
            # every prediction that ties for the best overlap with some ground truth
            _, pred_idx = torch.where(quality == best_per_gt[:, None])
            matches[pred_idx] = original[pred_idx]
        return matches


class BalancedSampler:
    """Samples up to ``batch_size_per_image`` labels per image, a ``positive_fraction`` of them
    foreground (label >= 1), the rest background (label 0); label -1 is never sampled.

    Sampling draws ``torch.randperm`` for positives then negatives, image by image: the same random
    stream as torchvision's BalancedPositiveNegativeSampler, so a fixed seed picks the same samples.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive = torch.where(lab >= 1)[0]
            negative = torch.where(lab == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
