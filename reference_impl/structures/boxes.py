"""Box utilities and the pieces that turn boxes into training targets: matcher and sampler."""

from __future__ import annotations

import torch

from ..syncs import to_host


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` [..., N, 4] with every box in ``b`` [..., M, 4] -> [..., N, M]
    (leading dimensions broadcast: a batch of images at once)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.min(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter)


def pad_stack(
    tensors: list[torch.Tensor], min_rows: int = 1, value: float = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image tensors [K_i, ...] as one [N, max K_i, ...] (at least ``min_rows`` rows, filled with
    ``value``) and the mask [N, max K_i] of the rows that are real."""
    rows = max([min_rows, *(len(t) for t in tensors)])
    ref = tensors[0]
    out = ref.new_full((len(tensors), rows, *ref.shape[1:]), value)
    valid = torch.zeros((len(tensors), rows), dtype=torch.bool, device=ref.device)
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
        valid[i, : len(t)] = True
    return out, valid


def nonempty(boxes: torch.Tensor, min_size: float, *, strictly: bool = False) -> torch.Tensor:
    """Indices of boxes whose width and height are both >= min_size (torchvision's ``remove_small_boxes``),
    or, ``strictly``, both > min_size (detectron2's ``Boxes.nonempty``)."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if strictly:
        return torch.where((ws > min_size) & (hs > min_size))[0]
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
    ``allow_low_quality_matches``, each ground truth also keeps the predictions that overlap it best
    (Faster R-CNN's RPN rule), if that best overlap is at least ``low_quality_min`` (0: whatever it is,
    as detectron2 and torchvision; mmdet's stock RPN asks 0.3, its ``min_pos_iou``).
    """

    BELOW_LOW = -1
    BETWEEN = -2

    def __init__(
        self, high: float, low: float, allow_low_quality_matches: bool, low_quality_min: float = 0.0
    ):
        if low > high:
            raise ValueError(f"low threshold {low} > high threshold {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches
        self.low_quality_min = low_quality_min

    def __call__(self, quality: torch.Tensor, valid_rows: torch.Tensor | None = None) -> torch.Tensor:
        """``quality`` [G, P], or [N, G, P] for a batch of images whose ground truth is padded: then
        ``valid_rows`` [N, G] marks the real rows, and the padded ones must hold a quality below any
        real one (-1 for IoU). An image with no real row gets ``BELOW_LOW`` everywhere."""
        if quality.numel() == 0:
            raise ValueError("Matcher: no ground truth or no predictions")
        best, matches = quality.max(dim=-2)
        # torch.where, not masked assignment: x[mask] = v would read the mask's size back from the device
        labelled = torch.where(best < self.high, self.BETWEEN, matches)
        labelled = torch.where(best < self.low, self.BELOW_LOW, labelled)
        if not self.allow_low_quality_matches:
            return labelled
        # every prediction that ties for the best overlap with some (real) ground truth keeps its match
        best_per_row = quality.max(dim=-1, keepdim=True).values
        ties = quality == best_per_row
        if self.low_quality_min > 0:
            ties &= best_per_row >= self.low_quality_min
        if valid_rows is not None:
            ties &= valid_rows[..., None]
        return torch.where(ties.any(dim=-2), matches, labelled)


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

    def sample_batched(self, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same draws as ``__call__`` for labels [N, M] (padding labelled -1), with one host
        synchronisation for the whole batch instead of two per image: per image, the sampled positive
        and negative positions, each in increasing order.

        A stable sort puts each image's positives, then negatives, first, in increasing position (what
        ``torch.where`` would list), so only their counts need to reach the host; ``randperm`` is then
        drawn image by image, positives then negatives, with the sizes ``__call__`` draws it with.
        """
        kind = torch.where(labels >= 1, 0, torch.where(labels == 0, 1, 2))
        order = torch.argsort(kind, dim=1, stable=True)
        counts = to_host(torch.stack([(kind == 0).sum(1), (kind == 1).sum(1)], 1))  # the one synchronisation
        out = []
        for row, (n_pos, n_neg) in zip(order, counts):
            num_pos = min(n_pos, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(n_neg, self.batch_size_per_image - num_pos)
            pos = row[:n_pos][torch.randperm(n_pos, device=row.device)[:num_pos]]
            neg = row[n_pos : n_pos + n_neg][torch.randperm(n_neg, device=row.device)[:num_neg]]
            out.append((pos.sort().values, neg.sort().values))
        return out
