"""Mask R-CNN: preprocessing, ResNet-50-FPN, RPN, RoI heads, postprocessing."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from .. import ops
from ..config import PerfCfg, ReferenceConfig
from ..structures import resize_boxes
from .backbone import ResNetFPN
from .cuda_graphs import GraphedByShape
from .preprocess import Preprocessor
from .roi_heads import ROIHeads
from .rpn import RPN


class MaskRCNN(nn.Module):
    """``forward(images, targets)``.

    images: list of [3, H, W] tensors, float in [0, 1] or uint8.
    targets (training): list of dicts with ``boxes`` [K, 4] (x1, y1, x2, y2, pixels), ``labels`` [K]
    (1..num_classes) and ``masks`` [K, H, W] (uint8).

    Training returns the loss dict: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg,
    loss_mask. Inference returns one dict per image with ``boxes`` [D, 4], ``scores`` [D],
    ``labels`` [D] and ``masks`` [D, 1, H, W] (probabilities), in the input image's coordinates.
    """

    graphed_backbone: GraphedByShape | None = None  # set by enable_cuda_graphs()
    # Speed switches that could not act here and left the eager path in place: {"lever", "why"} each
    lever_fallbacks: list[dict]
    # Extra backbone + FPN forward passes per training step (no grad, discarded): real work planted to
    # measure the regression gate's power. The fraction runs on that share of the batch's rows.
    recompute_backbone: float = 0.0

    def __init__(self, *, preprocess: Preprocessor, backbone: ResNetFPN, rpn: RPN, roi_heads: ROIHeads):
        super().__init__()
        self.preprocess, self.backbone, self.rpn, self.roi_heads = preprocess, backbone, rpn, roi_heads
        self.lever_fallbacks = []

    @classmethod
    def from_config(cls, cfg: ReferenceConfig) -> MaskRCNN:
        backbone = ResNetFPN.from_config(cfg)
        model = cls(
            preprocess=Preprocessor.from_config(cfg),
            backbone=backbone,
            rpn=RPN.from_config(cfg, backbone.out_channels),
            roi_heads=ROIHeads.from_config(cfg, backbone.out_channels),
        )
        backbone.body.fold_frozen_bn(cfg.perf.fold_frozen_bn)
        if cfg.perf.compile_heads:  # in place: parameter names (and state dicts) stay as they are
            compile_or_stay_eager(model.roi_heads.box_head, "reference.compile_heads", model.lever_fallbacks)
            compile_or_stay_eager(model.roi_heads.mask_head, "reference.compile_heads", model.lever_fallbacks)
        if cfg.perf.cuda_graphs:
            model.enable_cuda_graphs(max_shapes=cfg.perf.cuda_graph_shapes)
        model.recompute_backbone = cfg.perf.recompute_backbone
        return model

    def enable_cuda_graphs(self, max_shapes: int = PerfCfg.cuda_graph_shapes, capture=None) -> MaskRCNN:
        """Train the backbone and FPN through CUDA graphs, one pair per padded batch shape (see
        ``cuda_graphs.GraphedByShape``; the autocast around the model must run with
        ``cache_enabled=False``)."""
        self.graphed_backbone = GraphedByShape(self.backbone, max_shapes=max_shapes, capture=capture)
        return self

    def set_channels_last(self, enabled: bool = True) -> MaskRCNN:
        """NHWC activations for the convolutions (faster with AMP on tensor cores, and on many CPUs)."""
        self.preprocess.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        batch, targets = self.preprocess(images, targets)
        feats = (self.graphed_backbone or self.backbone)(batch.tensor)
        if self.training and self.recompute_backbone:
            self._recompute_backbone(batch.tensor)
        proposals, rpn_losses = self.rpn(batch, feats, targets)
        results, roi_losses = self.roi_heads(feats, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.postprocess(results, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def _recompute_backbone(self, tensor: torch.Tensor) -> int:
        """The planted slowdown: the backbone + FPN again, whole passes then a top slice of the rows
        (a multiple of 32, the FPN's stride); returns the rows computed, for the tests."""
        whole, part = divmod(self.recompute_backbone, 1.0)
        rows = int(whole) * tensor.shape[-2]
        for _ in range(int(whole)):
            self.backbone(tensor)
        extra = int(round(part * tensor.shape[-2] / 32)) * 32
        if extra:
            self.backbone(tensor[..., :extra, :])
        return rows + extra

    @staticmethod
    def postprocess(results, image_sizes, original_sizes):
        for r, size, original in zip(results, image_sizes, original_sizes):
            r["boxes"] = resize_boxes(r["boxes"], size, original)
            if "masks" in r:
                r["masks"] = ops.paste_masks(r["masks"][:, 0], r["boxes"], original[0], original[1])[:, None]
        return results


# torchvision's maskrcnn_resnet50_fpn parameter-name prefixes and ours ("{}": a level or layer number);
# the first pair whose prefix a key starts with renames it, either way
_NAMES = [
    ("backbone.fpn.inner_blocks.{}.0.", "backbone.fpn.lateral.{}."),
    ("backbone.fpn.layer_blocks.{}.0.", "backbone.fpn.output.{}."),
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    ("rpn.head.cls_logits.", "rpn.head.objectness."),
    ("rpn.head.bbox_pred.", "rpn.head.deltas."),
    ("roi_heads.box_head.fc6.", "roi_heads.box_head.fcs.0."),
    ("roi_heads.box_head.fc7.", "roi_heads.box_head.fcs.1."),
    ("roi_heads.box_predictor.", "roi_heads.box_head."),  # cls_score, bbox_pred
    ("roi_heads.mask_head.{}.0.", "roi_heads.mask_head.convs.{}."),
    ("roi_heads.mask_predictor.conv5_mask.", "roi_heads.mask_head.deconv."),
    ("roi_heads.mask_predictor.mask_fcn_logits.", "roi_heads.mask_head.predictor."),
]


def _renamed(state: dict, pairs: list[tuple[str, str]]) -> dict:
    """``state`` with each key renamed by the first pair (from-prefix, to-prefix) it starts with, BatchNorm's
    step counters left out."""
    rules = [
        (re.compile("^" + re.escape(a).replace(r"\{\}", r"(\d+)")), b.replace("{}", r"\1")) for a, b in pairs
    ]
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        rule = next(((pattern, repl) for pattern, repl in rules if pattern.match(key)), None)
        out[rule[0].sub(rule[1], key, count=1) if rule else key] = value
    return out


def convert_torchvision_state_dict(state: dict) -> dict:
    """A torchvision ``maskrcnn_resnet50_fpn`` state dict in this model's parameter names."""
    return _renamed(state, _NAMES)


def to_torchvision_state_dict(state: dict) -> dict:
    """This model's state dict in torchvision ``maskrcnn_resnet50_fpn``'s parameter names (the
    layout the harness's shared initial weights use); BatchNorm's step counters are left out."""
    return _renamed(state, [(ours, theirs) for theirs, ours in _NAMES])


def load_torchvision_weights(model: MaskRCNN, state_or_path) -> None:
    """Load torchvision Mask R-CNN weights (a state dict or a path), strictly: every key must match
    (BatchNorm's step counters, which torchvision's FrozenBatchNorm2d lacks, keep the model's own)."""
    state = state_or_path
    if not isinstance(state, dict):
        state = torch.load(state_or_path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    converted = convert_torchvision_state_dict(state)
    own = model.state_dict()
    converted.update(
        {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in converted}
    )
    model.load_state_dict(converted, strict=True)


def compile_or_stay_eager(module: nn.Module, lever: str, fallbacks: list[dict]) -> None:
    """``module.compile(dynamic=True)``, in place; if compiling fails at the first call (no C++ compiler
    for inductor, a device it cannot serve), the module runs eagerly from then on, with one warning
    and a ``{"lever", "why"}`` entry in ``fallbacks``. Errors of the module's own code still raise."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    module.compile(dynamic=True)
    compiled = module._compiled_call_impl  # what nn.Module calls instead of forward once compiled

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except (BackendCompilerFailed, InductorError) as e:
            module._compiled_call_impl = None
            why = f"torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            if not any(f["lever"] == lever for f in fallbacks):  # one warning per lever, not per module
                warnings.warn(f"{lever}: {why}; running eagerly", stacklevel=2)
            fallbacks.append({"lever": lever, "module": type(module).__name__, "why": why})
            return module(*args, **kwargs)

    module._compiled_call_impl = call
