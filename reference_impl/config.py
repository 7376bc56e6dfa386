"""The reference implementation's own config: plain dataclasses, built from the canonical config.

Every module takes explicit keyword arguments (``from_config`` maps this config to them), so the
model is usable without any config system.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

#: torchvision's RPN keeps proposals whose sides are >= 1e-3 (``remove_small_boxes``); the reference keeps
#: sides > min_proposal_size: the two part only on a side of exactly 1e-3
TORCHVISION_MIN_SIZE = 1e-3


@dataclass(frozen=True)
class BackboneCfg:
    depth: int = 50
    freeze_at: int = 2
    norm: str = "FrozenBN"  # FrozenBN | BN | SyncBN
    fpn_out_channels: int = 256


@dataclass(frozen=True)
class AnchorCfg:
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    round_to_pixels: bool = False  # corners rounded to whole pixels (torchvision) or kept (detectron2, mmdet)


@dataclass(frozen=True)
class RPNCfg:
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    nms_thresh: float = 0.7
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 1000
    pre_nms_topk_test: int = 1000
    post_nms_topk_test: int = 1000
    smooth_l1_beta: float = 1.0 / 9
    low_quality_matches: bool = True  # a box's best-overlapping anchors are positive too ...
    low_quality_min_iou: float = 0.0  # ... when that best IoU is at least this
    min_proposal_size: float = 0.0  # proposals kept when both sides exceed this (after clipping)


@dataclass(frozen=True)
class ROIHeadsCfg:
    num_classes: int = 80  # foreground classes; label 0 is background
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_pooler_resolution: int = 7
    mask_pooler_resolution: int = 14
    pooler_sampling_ratio: int = 0
    pooler_aligned: bool = True
    box_head_num_fc: int = 2
    box_head_fc_dim: int = 1024
    mask_head_num_conv: int = 4
    mask_head_conv_dim: int = 256
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    smooth_l1_beta: float = 1.0 / 9
    mask_target: str = "polygon"  # polygon | bitmask_binarized | bitmask_soft (see structures/masks.py)


@dataclass(frozen=True)
class InputCfg:
    min_size_train: tuple[int, ...] = (800,)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    resize_rounding: str = "round"  # the resized sides: "round" (detectron2, mmdet) or "floor" (torchvision)


@dataclass(frozen=True)
class PerfCfg:
    """Speed switches that leave the model's arithmetic as it is (benchmarks/levers.py measures each)."""

    fused_pooler: bool = True  # one native call over all FPN levels; False: a RoIAlign call per level
    compile_heads: bool = False  # torch.compile the box and mask heads (dynamic shapes: RoI counts vary)
    fold_frozen_bn: bool = (
        False  # each conv + FrozenBN of the backbone as one convolution (backbone.conv_norm)
    )
    channels_last: bool = (
        False  # NHWC activations and weights end to end (applied where the model is trained)
    )
    keep_freed_memory: bool = (
        False  # the training process's allocator keeps freed memory (engine/allocator.py)
    )
    batched_targets: bool = (
        True  # proposals, matching, sampling and targets for the whole batch at once on the
    )
    # device, a few host synchronisations a step; False: image by image, as torchvision (two syncs per image
    # per stage)
    cuda_graphs: bool = False  # train the backbone + FPN through CUDA graphs, one pair per padded batch shape
    cuda_graph_shapes: int = 16  # at most this many shapes captured; further shapes run eagerly
    recompute_backbone: float = 0.0  # a planted slowdown, not a speed switch: see MaskRCNN.recompute_backbone


def _take(section, source, **explicit):
    """``section`` (a dataclass) with the fields that ``source`` has under the same names (lists as
    tuples), then ``explicit`` ones."""
    values = {
        f.name: getattr(source, f.name)
        for f in fields(section)
        if f.name not in explicit and hasattr(source, f.name)
    }
    return section(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, **explicit)


@dataclass(frozen=True)
class ReferenceConfig:
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    anchors: AnchorCfg = field(default_factory=AnchorCfg)
    rpn: RPNCfg = field(default_factory=RPNCfg)
    roi_heads: ROIHeadsCfg = field(default_factory=ROIHeadsCfg)
    input: InputCfg = field(default_factory=InputCfg)
    perf: PerfCfg = field(default_factory=PerfCfg)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_canonical(cls, cfg, num_classes: int) -> ReferenceConfig:
        """Each section's fields from the canonical section of the same name, field by field (what the
        canonical config does not have keeps the reference's default: the box-coding weights, the size
        divisibility); the backbone's norm and frozen stages as the run uses them."""
        m = cfg.model
        return cls(
            perf=_take(PerfCfg, cfg.reference),
            backbone=_take(
                BackboneCfg,
                m.backbone,
                freeze_at=m.effective_freeze_at,
                norm=m.effective_norm,
                fpn_out_channels=m.fpn_out_channels,
            ),
            anchors=_take(AnchorCfg, m.anchors),
            rpn=_take(RPNCfg, m.rpn),
            roi_heads=_take(ROIHeadsCfg, m.roi_heads, num_classes=num_classes),
            input=_take(InputCfg, cfg.input, pixel_mean=tuple(m.pixel_mean), pixel_std=tuple(m.pixel_std)),
        )

    @classmethod
    def like_torchvision(cls, num_classes: int, **overrides) -> ReferenceConfig:
        """Configured as torchvision's maskrcnn_resnet50_fpn defaults (for the equality tests): its anchors
        rounded to whole pixels, its resize floored, proposals of sides >= 1e-3, legacy RoIAlign with
        2 samples, fractional bitmask targets, smooth L1 with beta 1/9."""
        cfg = cls(
            anchors=AnchorCfg(round_to_pixels=True),
            rpn=RPNCfg(min_proposal_size=TORCHVISION_MIN_SIZE),
            roi_heads=ROIHeadsCfg(
                num_classes=num_classes,
                pooler_sampling_ratio=2,
                pooler_aligned=False,
                mask_target="bitmask_soft",
            ),
            input=InputCfg(resize_rounding="floor"),
        )
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            cfg = _replace(cfg, section, name, value)
        return cfg


def _replace(cfg, section: str, name: str, value):
    from dataclasses import replace

    return replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
