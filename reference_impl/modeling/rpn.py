"""Anchors and the Region Proposal Network: head, proposals (top-k per level, NMS per level,
top-k per image) and losses (matcher, balanced sampler, smooth L1 + binary cross-entropy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..structures import BalancedSampler, Matcher, nonempty, pad_stack, pairwise_iou
from ..syncs import to_host


class AnchorGenerator(nn.Module):
    """One anchor size per FPN level, several aspect ratios; anchors at every feature-map cell.

    ``round_to_pixels``: corners rounded to whole pixels, as torchvision's generator does; otherwise
    kept as computed, as detectron2's and mmdet's are (a ratio-0.5 anchor of size 32 is 22.6 x 45.3,
    not 22 x 46). On objects near the smallest anchor's size this decides which anchors tie for a box's
    best overlap, and so how many the low-quality rule makes positive."""

    def __init__(
        self, *, sizes: tuple[int, ...], aspect_ratios: tuple[float, ...], round_to_pixels: bool = False
    ):
        super().__init__()
        self.sizes, self.aspect_ratios, self.round_to_pixels = (
            tuple(sizes),
            tuple(aspect_ratios),
            round_to_pixels,
        )
        cells = []
        for size in sizes:
            ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
            h_ratios = torch.sqrt(ratios)
            w_ratios = 1 / h_ratios
            ws = (w_ratios * size).view(-1)
            hs = (h_ratios * size).view(-1)
            cell = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
            cells.append(cell.round() if round_to_pixels else cell)
        self.cell_anchors = cells
        self.num_anchors = len(aspect_ratios)
        self._cache: dict = {}

    def forward(
        self, image_shape: tuple[int, int], feature_shapes: list[tuple[int, int]], device, dtype
    ) -> list[torch.Tensor]:
        """Anchors per level [H*W*A, 4], ordered (y, x, anchor); the same for every image of a batch."""
        key = (tuple(image_shape), tuple(feature_shapes), device, dtype)
        if key in self._cache:
            return self._cache[key]
        out = []
        for (gh, gw), cell in zip(feature_shapes, self.cell_anchors):
            sh, sw = image_shape[0] // gh, image_shape[1] // gw
            xs = torch.arange(0, gw, dtype=torch.int32, device=device) * sw
            ys = torch.arange(0, gh, dtype=torch.int32, device=device) * sh
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            x, y = x.reshape(-1), y.reshape(-1)
            shifts = torch.stack((x, y, x, y), dim=1)
            out.append((shifts.view(-1, 1, 4) + cell.to(device).view(1, -1, 4)).reshape(-1, 4).to(dtype))
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out


class RPNHead(nn.Module):
    def __init__(self, *, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, feats: list[torch.Tensor]):
        # The two 1x1 predictors as one convolution over their stacked weights: each output channel is the
        # same dot product, and the shared input is read once forward and given one gradient backward
        # instead of two added (0.9% of cpu_canonical's step). The ReLU in place: the convolution's output
        # is not needed for its backward.
        a = self.objectness.out_channels
        weight = torch.cat([self.objectness.weight, self.deltas.weight])
        bias = torch.cat([self.objectness.bias, self.deltas.bias])
        logits, deltas = [], []
        for f in feats:
            out = F.conv2d(F.relu_(self.conv(f)), weight, bias)
            logits.append(out[:, :a])
            deltas.append(out[:, a:])
        return logits, deltas


def _clip(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)],
        1,
    )


def _flatten_level(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """[N, A*K, H, W] -> [N, H*W*A, K], in the (y, x, anchor) order of the anchors."""
    n, _, h, w = x.shape
    return x.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class RPN(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        anchor_sizes: tuple[int, ...],
        aspect_ratios: tuple[float, ...],
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        nms_thresh: float,
        pre_nms_topk: tuple[int, int],  # (train, test), per level per image
        post_nms_topk: tuple[int, int],  # (train, test), per image
        min_proposal_size: float = 0.0,  # proposals kept when both sides exceed it
        smooth_l1_beta: float = 1.0 / 9,
        low_quality_matches: bool = True,
        low_quality_min_iou: float = 0.0,
        round_anchors: bool = False,
        batched_targets: bool = True,
    ):
        super().__init__()
        self.anchor_generator = AnchorGenerator(
            sizes=anchor_sizes, aspect_ratios=aspect_ratios, round_to_pixels=round_anchors
        )
        self.head = RPNHead(in_channels=in_channels, num_anchors=self.anchor_generator.num_anchors)
        self.matcher = Matcher(
            fg_iou_thresh,
            bg_iou_thresh,
            allow_low_quality_matches=low_quality_matches,
            low_quality_min=low_quality_min_iou,
        )
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.nms_thresh = nms_thresh
        self.pre_nms_topk, self.post_nms_topk = pre_nms_topk, post_nms_topk
        self.min_proposal_size, self.smooth_l1_beta = min_proposal_size, smooth_l1_beta
        self.batched_targets = batched_targets

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> RPN:
        r = cfg.rpn
        return cls(
            in_channels=in_channels,
            anchor_sizes=cfg.anchors.sizes,
            aspect_ratios=cfg.anchors.aspect_ratios,
            fg_iou_thresh=r.fg_iou_thresh,
            bg_iou_thresh=r.bg_iou_thresh,
            batch_size_per_image=r.batch_size_per_image,
            positive_fraction=r.positive_fraction,
            nms_thresh=r.nms_thresh,
            pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
            post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
            min_proposal_size=r.min_proposal_size,
            smooth_l1_beta=r.smooth_l1_beta,
            low_quality_matches=r.low_quality_matches,
            low_quality_min_iou=r.low_quality_min_iou,
            round_anchors=cfg.anchors.round_to_pixels,
            batched_targets=cfg.perf.batched_targets,
        )

    def forward(self, images, feats: list[torch.Tensor], targets: list[dict] | None = None):
        """Returns (proposals per image [K_i, 4], losses dict). Losses only in training."""
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(
            tuple(images.tensor.shape[-2:]),
            [tuple(f.shape[-2:]) for f in feats],
            feats[0].device,
            feats[0].dtype,
        )
        logits = [_flatten_level(x, 1).squeeze(2) for x in logits]  # [N, HWA] per level
        deltas = [_flatten_level(x, 4) for x in deltas]  # [N, HWA, 4] per level
        proposals = self._proposals(
            anchors, [x.detach() for x in logits], [x.detach() for x in deltas], images.image_sizes
        )
        losses = {}
        if self.training:
            losses = self._losses(torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), targets)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, anchors, logits, deltas, image_sizes):
        idx = 0 if self.training else 1
        pre_k, post_k = self.pre_nms_topk[idx], self.post_nms_topk[idx]
        n = logits[0].shape[0]
        batch_range = torch.arange(n, device=logits[0].device)[:, None]
        boxes, scores, levels = [], [], []
        # Top-k per level first, then decode only the kept anchors (decoding is element-wise, so this
        # equals decoding everything and selecting afterwards, for a fraction of the work).
        for lvl, (anc, lg, dl) in enumerate(zip(anchors, logits, deltas)):
            k = min(pre_k, lg.shape[1])
            top_scores, top_idx = lg.topk(k, dim=1)
            sel_deltas = dl[batch_range, top_idx].reshape(-1, 4)
            sel_anchors = anc[top_idx.reshape(-1)]
            boxes.append(ops.decode_boxes(sel_deltas, sel_anchors).view(n, k, 4))
            scores.append(top_scores)
            levels.append(torch.full((n, k), lvl, dtype=torch.int64, device=lg.device))
        boxes, scores, levels = torch.cat(boxes, 1), torch.cat(scores, 1).sigmoid(), torch.cat(levels, 1)
        if self.batched_targets:
            return self._select_batched(boxes, scores, levels, image_sizes, post_k)
        out = []
        for b, s, lv, (h, w) in zip(boxes, scores, levels, image_sizes):
            b = _clip(b, h, w)
            keep = nonempty(b, self.min_proposal_size, strictly=True)
            b, s, lv = b[keep], s[keep], lv[keep]
            keep = ops.batched_nms(b, s, lv, self.nms_thresh)[:post_k]
            out.append(b[keep])
        return out

    def _select_batched(self, boxes, scores, levels, image_sizes, post_k):
        """Clip, drop small boxes, NMS per (image, level), top ``post_k`` per image, for the whole batch
        with one NMS call and two host synchronisations (the kept count, the per-image counts), where
        the per-image loop has two an image. The same boxes in the same order: NMS groups never meet,
        and the kept ones come back by decreasing score, ties in their original order, image by image."""
        n, k = scores.shape
        boxes = torch.stack(
            [_clip(b, h, w) for b, (h, w) in zip(boxes, image_sizes)]
        )  # bounds as numbers: no copy to the device
        wh = boxes[..., 2:] - boxes[..., :2]
        big_enough = (wh > self.min_proposal_size).all(-1)
        image = torch.arange(n, device=boxes.device)[:, None]
        # too small: a group of their own (NMS among themselves only), dropped below
        group = torch.where(big_enough, image * len(self.anchor_generator.sizes) + levels, -1)
        keep = ops.batched_nms(boxes.reshape(-1, 4), scores.reshape(-1), group.reshape(-1), self.nms_thresh)
        owner = torch.where(big_enough.reshape(-1)[keep], keep // k, n)  # n: dropped
        by_image = keep[torch.argsort(owner, stable=True)]
        counts = to_host(torch.bincount(owner, minlength=n + 1))
        flat, out, start = boxes.reshape(-1, 4), [], 0
        for count in counts[:n]:
            out.append(flat[by_image[start : start + min(count, post_k)]])
            start += count
        return out

    def _losses(self, anchors, logits, deltas, targets):
        logits = logits.reshape(-1)
        deltas = deltas.reshape(-1, 4)
        if self.batched_targets:
            labels, pos, neg, pos_targets = self._targets_batched(anchors, targets)
        else:
            labels, pos, neg, pos_targets = self._targets_per_image(anchors, targets)
        sampled = torch.cat([pos, neg])
        box_loss = (
            F.smooth_l1_loss(deltas[pos], pos_targets, beta=self.smooth_l1_beta, reduction="sum")
            / sampled.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

    def _targets_per_image(self, anchors, targets):
        """Labels of every anchor of the batch (1 object, 0 background, -1 ignored), the sampled
        positive and negative anchors (flat indices) and the positives' regression targets: one image
        at a time, as torchvision builds them."""
        labels, regression_targets = [], []
        for t in targets:
            gt = t["boxes"]
            if gt.numel() == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                regression_targets.append(torch.zeros_like(anchors))
                continue
            matches = self.matcher(pairwise_iou(gt, anchors))
            labels.append(self._labels(matches))
            regression_targets.append(ops.encode_boxes(gt[matches.clamp(min=0)], anchors))
        pos, neg = self.sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        neg = torch.where(torch.cat(neg))[0]
        return torch.cat(labels), pos, neg, torch.cat(regression_targets)[pos]

    def _targets_batched(self, anchors, targets):
        """``_targets_per_image`` for the whole batch at once on the device (ground truth padded, one
        IoU matrix [N, G, A]), with one host synchronisation, and encoding only the positives."""
        gt, valid = pad_stack([t["boxes"] for t in targets])
        iou = torch.where(valid[..., None], pairwise_iou(gt, anchors), -1.0)  # padding never matches
        matches = self.matcher(iou, valid)
        labels = self._labels(matches)
        samples = self.sampler.sample_batched(labels)
        num_anchors = anchors.shape[0]
        pos = torch.cat([p + i * num_anchors for i, (p, _) in enumerate(samples)])
        neg = torch.cat([q + i * num_anchors for i, (_, q) in enumerate(samples)])
        image, anchor = pos // num_anchors, pos % num_anchors
        matched_gt = gt[image, matches.reshape(-1)[pos]]
        return labels.reshape(-1), pos, neg, ops.encode_boxes(matched_gt, anchors[anchor])

    @staticmethod
    def _labels(matches: torch.Tensor) -> torch.Tensor:
        """1.0 matched, 0.0 background, -1.0 ignored (between the thresholds)."""
        return torch.where(matches >= 0, 1.0, torch.where(matches == Matcher.BETWEEN, -1.0, 0.0))
