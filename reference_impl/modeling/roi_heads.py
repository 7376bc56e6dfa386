"""RoI heads: sampling of proposals, multi-level RoIAlign, the 2xFC box head, the 4xconv + deconv
mask head, their losses, and inference post-processing."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..structures import MASK_TARGETS, BalancedSampler, Matcher, nonempty, pad_stack, pairwise_iou
from ..structures import mask_targets as mask_targets_of


class MultiLevelPooler(nn.Module):
    """RoIAlign from the FPN level each box belongs to, in one native call (``fused``), or, as
    torchvision's MultiScaleRoIAlign does, one call per level (the same values; for measuring)."""

    def __init__(
        self,
        *,
        output_size: int,
        sampling_ratio: int,
        aligned: bool,
        canonical_level: int = 4,
        canonical_scale: int = 224,
        fused: bool = True,
    ):
        super().__init__()
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned
        self.canonical_level, self.canonical_scale, self.fused = canonical_level, canonical_scale, fused

    def forward(self, feats: list[torch.Tensor], boxes: list[torch.Tensor], image_sizes) -> torch.Tensor:
        # Level scales from the feature sizes relative to the largest image (as torchvision infers them).
        max_h = max(h for h, _ in image_sizes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in feats]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        return ops.multilevel_roi_align(
            feats,
            rois,
            scales,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            self.canonical_level,
            self.canonical_scale,
            fused=self.fused,
        )


class BoxHead(nn.Module):
    """Flatten, then ``num_fc`` x (FC + ReLU); then class scores and class-specific box deltas.

    Initialised as the canonical config's framework (detectron2, after Detectron) does: the FCs with
    Caffe2's "Xavier" fill (uniform, bound sqrt(3 / fan_in)), the class scores from N(0, 0.01) and the deltas
    from N(0, 0.001), biases zero, so that the first losses are those of near-uniform scores and zero
    deltas."""

    def __init__(self, *, in_features: int, fc_dim: int, num_fc: int, num_classes: int):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(in_features if i == 0 else fc_dim, fc_dim) for i in range(num_fc))
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, (num_classes + 1) * 4)
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
        for layer in (*self.fcs, self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """``num_conv`` x (3x3 conv + ReLU), a 2x2 stride-2 deconvolution + ReLU, a 1x1 conv per class.

    Initialised as detectron2 does: the convolutions and the deconvolution with He's fill (fan out), the
    per-class logits from N(0, 0.001), biases zero. (torchvision and mmdet give the logits He's fill too:
    from a randomly initialised backbone that starts the mask loss near 8 instead of log 2, and cpu_eval's
    short schedule diverged on it in 5 of 12 runs.)"""

    def __init__(self, *, in_channels: int, conv_dim: int, num_conv: int, num_classes: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1) for i in range(num_conv)
        )
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes + 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.predictor(F.relu(self.deconv(x)))


class ROIHeads(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        box_pooler_resolution: int,
        mask_pooler_resolution: int,
        pooler_sampling_ratio: int,
        pooler_aligned: bool,
        box_head_num_fc: int,
        box_head_fc_dim: int,
        mask_head_num_conv: int,
        mask_head_conv_dim: int,
        bbox_reg_weights: tuple[float, float, float, float],
        score_thresh_test: float,
        nms_thresh_test: float,
        detections_per_image: int,
        smooth_l1_beta: float = 1.0 / 9,
        mask_target: str = "polygon",
        fused_pooler: bool = True,
        batched_targets: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_pooler = MultiLevelPooler(
            output_size=box_pooler_resolution,
            sampling_ratio=pooler_sampling_ratio,
            aligned=pooler_aligned,
            fused=fused_pooler,
        )
        self.mask_pooler = MultiLevelPooler(
            output_size=mask_pooler_resolution,
            sampling_ratio=pooler_sampling_ratio,
            aligned=pooler_aligned,
            fused=fused_pooler,
        )
        self.box_head = BoxHead(
            in_features=in_channels * box_pooler_resolution**2,
            fc_dim=box_head_fc_dim,
            num_fc=box_head_num_fc,
            num_classes=num_classes,
        )
        self.mask_head = MaskHead(
            in_channels=in_channels,
            conv_dim=mask_head_conv_dim,
            num_conv=mask_head_num_conv,
            num_classes=num_classes,
        )
        self.bbox_reg_weights = tuple(bbox_reg_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_image = (
            score_thresh_test,
            nms_thresh_test,
            detections_per_image,
        )
        self.smooth_l1_beta, self.batched_targets = smooth_l1_beta, batched_targets
        if mask_target not in MASK_TARGETS:
            raise ValueError(f"mask_target {mask_target!r}: expected one of {', '.join(MASK_TARGETS)}")
        self.mask_target = mask_target

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> ROIHeads:
        r = cfg.roi_heads
        return cls(
            in_channels=in_channels,
            fused_pooler=cfg.perf.fused_pooler,
            batched_targets=cfg.perf.batched_targets,
            **{k: v for k, v in r.__dict__.items()},
        )

    # --------------------------------------------------------------------------------- training
    @torch.no_grad()
    def _sample(self, proposals: list[torch.Tensor], targets: list[dict]) -> RoISample:
        """Proposals (with the ground-truth boxes added) sampled per image, with their labels,
        matched ground truth and box regression targets: one image at a time, as torchvision does."""
        all_labels, all_matches, all_props = [], [], []
        for props, t in zip(proposals, targets):
            gt, gt_labels = t["boxes"].to(props.dtype), t["labels"]
            props = torch.cat([props, gt])
            if gt.numel() == 0:
                m = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                lab = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
            else:
                m = self.matcher(pairwise_iou(gt, props))
                lab = self._labels(m, gt_labels[m.clamp(min=0)].to(torch.int64))
                m = m.clamp(min=0)
            all_props.append(props)
            all_labels.append(lab)
            all_matches.append(m)
        pos, neg = self.sampler(all_labels)
        boxes, labels, matched, reg_targets = [], [], [], []
        for props, lab, m, p, n, t in zip(all_props, all_labels, all_matches, pos, neg, targets):
            idx = torch.where(p | n)[0]
            gt = t["boxes"].to(props.dtype)
            if gt.numel() == 0:
                gt = torch.zeros((1, 4), dtype=props.dtype, device=props.device)
            boxes.append(props[idx])
            labels.append(lab[idx])
            matched.append(m[idx])
            reg_targets.append(ops.encode_boxes(gt[m[idx]], props[idx], self.bbox_reg_weights))
        labels = torch.cat(labels)
        positives = [torch.where(lab > 0)[0] for lab in labels.split([len(b) for b in boxes])]
        return RoISample.gather(boxes, labels, torch.cat(matched), torch.cat(reg_targets), positives)

    @torch.no_grad()
    def _sample_batched(self, proposals: list[torch.Tensor], targets: list[dict]) -> RoISample:
        """``_sample`` for the whole batch at once on the device (proposals and ground truth padded,
        one IoU matrix [N, G, P]), with one host synchronisation (the sampler's counts), after which
        every size is known on the host: the positives' places too, so the heads need no more."""
        dtype = proposals[0].dtype
        gts = [t["boxes"].to(dtype) for t in targets]
        props, props_valid = pad_stack([torch.cat([p, g]) for p, g in zip(proposals, gts)])
        gt, gt_valid = pad_stack(gts)
        gt_labels, _ = pad_stack([t["labels"].to(torch.int64) for t in targets])
        m = self.matcher(torch.where(gt_valid[..., None], pairwise_iou(gt, props), -1.0))
        lab = torch.where(
            props_valid, self._labels(m, torch.gather(gt_labels, 1, m.clamp(min=0))), -1
        )  # padding: never sampled
        samples = self.sampler.sample_batched(lab)
        rows = props.shape[1]
        chosen = [
            torch.cat([p, q]).sort().values for p, q in samples
        ]  # the order torch.where(p | n) lists them in
        flat = torch.cat([c + i * rows for i, c in enumerate(chosen)])
        boxes, image = props.reshape(-1, 4)[flat], flat // rows
        matched = m.clamp(min=0).reshape(-1)[flat]
        reg_targets = ops.encode_boxes(gt[image, matched], boxes, self.bbox_reg_weights)
        positives = [torch.searchsorted(c, p) for c, (p, _) in zip(chosen, samples)]
        return RoISample.gather(
            list(boxes.split([len(c) for c in chosen])),
            lab.reshape(-1)[flat],
            matched,
            reg_targets,
            positives,
        )

    @staticmethod
    def _labels(matches: torch.Tensor, matched_labels: torch.Tensor) -> torch.Tensor:
        """The matched ground truth's class, 0 background, -1 ignored (between the thresholds)."""
        return torch.where(
            matches == Matcher.BELOW_LOW, 0, torch.where(matches == Matcher.BETWEEN, -1, matched_labels)
        )

    def _box_losses(self, class_logits, box_deltas, sample: RoISample):
        labels, pos = sample.labels, sample.positives
        loss_cls = F.cross_entropy(class_logits, labels)
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[pos, labels[pos]]
        loss_box = (
            F.smooth_l1_loss(deltas, sample.reg_targets[pos], beta=self.smooth_l1_beta, reduction="sum")
            / labels.numel()
        )
        return loss_cls, loss_box

    def _mask_loss(self, mask_logits, boxes, labels, matched, targets):
        """Binary cross-entropy of the label's mask channel against the ground truth's mask target by
        ``self.mask_target`` (structures/masks.py). ``boxes`` and ``matched`` per image, ``labels`` for
        all of them."""
        m = mask_logits.shape[-1]
        with torch.no_grad():
            mask_targets = torch.cat(
                [
                    mask_targets_of(self.mask_target, t, b, idx, m, ops.roi_align)
                    for b, idx, t in zip(boxes, matched, targets)
                ]
            )
        if mask_targets.numel() == 0:
            return mask_logits.sum() * 0
        picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(picked, mask_targets)

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        feats: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes,
        targets: list[dict] | None = None,
    ):
        feats = feats[:4]  # P2-P5 (P6 is for the RPN only)
        if self.training:
            sample = (self._sample_batched if self.batched_targets else self._sample)(proposals, targets)
            class_logits, box_deltas = self.box_head(self.box_pooler(feats, sample.boxes, image_sizes))
            loss_cls, loss_box = self._box_losses(class_logits, box_deltas, sample)
            pos_boxes = list(torch.cat(sample.boxes)[sample.positives].split(sample.positive_counts))
            mask_logits = self.mask_head(self.mask_pooler(feats, pos_boxes, image_sizes))
            pos_matched = sample.matched[sample.positives].split(sample.positive_counts)
            loss_mask = self._mask_loss(
                mask_logits, pos_boxes, sample.labels[sample.positives], pos_matched, targets
            )
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}
        class_logits, box_deltas = self.box_head(self.box_pooler(feats, proposals, image_sizes))
        results = self._detections(class_logits, box_deltas, proposals, image_sizes)
        mask_logits = self.mask_head(self.mask_pooler(feats, [r["boxes"] for r in results], image_sizes))
        probs = mask_logits.sigmoid()
        labels = torch.cat([r["labels"] for r in results])
        probs = probs[torch.arange(labels.shape[0], device=labels.device), labels][:, None]
        for r, p in zip(results, probs.split([len(r["boxes"]) for r in results])):
            r["masks"] = p
        return results, {}

    @torch.no_grad()
    def _detections(self, class_logits, box_deltas, proposals, image_sizes):
        counts = [len(p) for p in proposals]
        boxes_all = ops.decode_boxes(box_deltas, torch.cat(proposals), self.bbox_reg_weights)
        scores_all = F.softmax(class_logits, -1)
        results = []
        for boxes, scores, (h, w) in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes):
            boxes = boxes.reshape(-1, self.num_classes + 1, 4)
            boxes = torch.stack(
                [
                    boxes[..., 0].clamp(0, w),
                    boxes[..., 1].clamp(0, h),
                    boxes[..., 2].clamp(0, w),
                    boxes[..., 3].clamp(0, h),
                ],
                -1,
            )
            labels = torch.arange(self.num_classes + 1, device=scores.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = (
                boxes[:, 1:].reshape(-1, 4),
                scores[:, 1:].reshape(-1),
                labels[:, 1:].reshape(-1),
            )
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = nonempty(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


@dataclass
class RoISample:
    """The RoIs sampled for the heads: boxes per image, and for all of them concatenated their
    labels, matched ground-truth index (within the image), regression targets, and the places of
    the positives (with how many per image, known on the host)."""

    boxes: list[torch.Tensor]
    labels: torch.Tensor
    matched: torch.Tensor
    reg_targets: torch.Tensor
    positives: torch.Tensor
    positive_counts: list[int]

    @classmethod
    def gather(
        cls, boxes, labels, matched, reg_targets, positives_per_image: list[torch.Tensor]
    ) -> RoISample:
        """``positives_per_image``: places within each image's boxes, made places in the concatenation."""
        offsets = itertools.accumulate((len(b) for b in boxes[:-1]), initial=0)
        positives = torch.cat([p + off for p, off in zip(positives_per_image, offsets)])
        return cls(boxes, labels, matched, reg_targets, positives, [len(p) for p in positives_per_image])
