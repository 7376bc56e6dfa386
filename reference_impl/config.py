"""The reference implementation's own config: plain dataclasses, built from the canonical config.

Every module takes explicit keyword arguments (``from_config`` maps this config to them), so the
model is usable without any config system.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    min_box_size: float = 1e-3
    smooth_l1_beta: float = 1.0 / 9


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


@dataclass(frozen=True)
class InputCfg:
    min_size_train: tuple[int, ...] = (800,)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32


@dataclass(frozen=True)
class PerfCfg:
    """Speed switches that leave the model's arithmetic as it is (benchmarks/levers.py measures each)."""

    fused_pooler: bool = True  # one native call over all FPN levels; False: a RoIAlign call per level
    compile_heads: bool = False  # torch.compile the box and mask heads (dynamic shapes: RoI counts vary)
    batched_targets: bool = True  # proposals, matching, sampling and targets for the whole batch at once on the
    # device, a few host synchronisations a step; False: image by image, as torchvision (two syncs per image per stage)
    cuda_graphs: bool = False  # train the backbone + FPN through CUDA graphs, one pair per padded batch shape
    cuda_graph_shapes: int = 16  # at most this many shapes captured; further shapes run eagerly


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
    def from_canonical(cls, cfg, num_classes: int) -> "ReferenceConfig":
        m, rpn, roi, inp, opts = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.reference
        return cls(
            perf=PerfCfg(
                fused_pooler=opts.fused_pooler, compile_heads=opts.compile_heads, batched_targets=opts.batched_targets,
                cuda_graphs=opts.cuda_graphs, cuda_graph_shapes=opts.cuda_graph_shapes,
            ),
            backbone=BackboneCfg(
                depth=m.backbone.depth, freeze_at=m.effective_freeze_at, norm=m.effective_norm, fpn_out_channels=m.fpn_out_channels
            ),
            anchors=AnchorCfg(sizes=tuple(m.anchors.sizes), aspect_ratios=tuple(m.anchors.aspect_ratios)),
            rpn=RPNCfg(
                fg_iou_thresh=rpn.fg_iou_thresh,
                bg_iou_thresh=rpn.bg_iou_thresh,
                batch_size_per_image=rpn.batch_size_per_image,
                positive_fraction=rpn.positive_fraction,
                nms_thresh=rpn.nms_thresh,
                pre_nms_topk_train=rpn.pre_nms_topk_train,
                post_nms_topk_train=rpn.post_nms_topk_train,
                pre_nms_topk_test=rpn.pre_nms_topk_test,
                post_nms_topk_test=rpn.post_nms_topk_test,
                smooth_l1_beta=rpn.smooth_l1_beta,
            ),
            roi_heads=ROIHeadsCfg(
                num_classes=num_classes,
                fg_iou_thresh=roi.fg_iou_thresh,
                bg_iou_thresh=roi.bg_iou_thresh,
                batch_size_per_image=roi.batch_size_per_image,
                positive_fraction=roi.positive_fraction,
                box_pooler_resolution=roi.box_pooler_resolution,
                mask_pooler_resolution=roi.mask_pooler_resolution,
                pooler_sampling_ratio=roi.pooler_sampling_ratio,
                pooler_aligned=roi.pooler_aligned,
                box_head_num_fc=roi.box_head_num_fc,
                box_head_fc_dim=roi.box_head_fc_dim,
                mask_head_num_conv=roi.mask_head_num_conv,
                mask_head_conv_dim=roi.mask_head_conv_dim,
                score_thresh_test=roi.score_thresh_test,
                nms_thresh_test=roi.nms_thresh_test,
                detections_per_image=roi.detections_per_image,
                smooth_l1_beta=roi.smooth_l1_beta,
            ),
            input=InputCfg(
                min_size_train=tuple(inp.min_size_train),
                max_size_train=inp.max_size_train,
                min_size_test=inp.min_size_test,
                max_size_test=inp.max_size_test,
                pixel_mean=tuple(m.pixel_mean),
                pixel_std=tuple(m.pixel_std),
            ),
        )

    @classmethod
    def like_torchvision(cls, num_classes: int, **overrides) -> "ReferenceConfig":
        """Configured as torchvision's maskrcnn_resnet50_fpn defaults (for the equality tests)."""
        cfg = cls(
            roi_heads=ROIHeadsCfg(num_classes=num_classes, pooler_sampling_ratio=2, pooler_aligned=False),
        )
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            cfg = _replace(cfg, section, name, value)
        return cfg


def _replace(cfg, section: str, name: str, value):
    from dataclasses import replace

    return replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
