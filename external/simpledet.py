"""SimpleDet (TuSimple/simpledet): MXNet. Its configs are Python modules of nested classes; the one
written here loads SimpleDet's own Mask R-CNN R-50-FPN config and sets the canonical values on its
classes before the symbols are built (an AST rewrite of the assignments, done in the container)."""

from __future__ import annotations

import pprint

from .base import STOP_AFTER, ExternalSystem, Translation, common_mismatches, gpus_and_batch, shell

BASE_CONFIG = "config/mask_r50v1_fpn_1x.py"


class SimpleDet(ExternalSystem):
    def values(self, cfg) -> dict[str, object]:
        """Class attribute (dotted path inside get_config) -> value."""
        m, rpn, roi, inp, sol = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        return {
            "General.batch_image": per_gpu,
            "General.log_frequency": 20,
            "General.fp16": cfg.benchmark.dtype == "fp16",
            "KvstoreParam.gpus": list(range(gpus)),
            "RpnParam.anchor_generate.ratio": tuple(m.anchors.aspect_ratios),
            "RpnParam.anchor_assign.pos_thr": rpn.fg_iou_thresh,
            "RpnParam.anchor_assign.neg_thr": rpn.bg_iou_thresh,
            "RpnParam.anchor_assign.image_anchor": rpn.batch_size_per_image,
            "RpnParam.anchor_assign.pos_fraction": rpn.positive_fraction,
            "RpnParam.proposal.pre_nms_top_n": rpn.pre_nms_topk_train,
            "RpnParam.proposal.post_nms_top_n": rpn.post_nms_topk_train,
            "RpnParam.proposal.nms_thr": rpn.nms_thresh,
            "RpnParam.subsample_proposal.image_roi": roi.batch_size_per_image,
            "RpnParam.subsample_proposal.fg_fraction": roi.positive_fraction,
            "RpnParam.subsample_proposal.fg_thr": roi.fg_iou_thresh,
            "RpnParam.subsample_proposal.bg_thr_hi": roi.bg_iou_thresh,
            "BboxParam.num_class": (m.num_classes or 80) + 1,
            "BboxParam.image_roi": roi.batch_size_per_image,
            "RoiParam.out_size": roi.box_pooler_resolution,
            "MaskRoiParam.out_size": roi.mask_pooler_resolution,
            "MaskParam.resolution": 2 * roi.mask_pooler_resolution,
            "MaskParam.dim_reduced": roi.mask_head_conv_dim,
            "OptimizeParam.optimizer.lr": sol.base_lr,
            "OptimizeParam.optimizer.momentum": sol.momentum,
            "OptimizeParam.optimizer.wd": sol.weight_decay,
            "OptimizeParam.schedule.end_epoch": 1,
            "OptimizeParam.schedule.lr_iter": list(sol.steps),
            "OptimizeParam.warmup.lr": sol.base_lr * sol.warmup_factor,
            "OptimizeParam.warmup.iter": sol.warmup_iters,
            "TestParam.min_det_score": roi.score_thresh_test,
            "TestParam.max_det_per_image": roi.detections_per_image,
            "TestParam.nms.thr": roi.nms_thresh_test,
            "NormParam.mean": tuple(m.pixel_mean),
            "NormParam.std": tuple(m.pixel_std),
            "ResizeParam.short": min(inp.min_size_train),
            "ResizeParam.long": inp.max_size_train,
            "PadParam.short": min(inp.min_size_train),
            "PadParam.long": inp.max_size_train,
        }

    def translate(self, cfg) -> Translation:
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        values = self.values(cfg)
        module = CONFIG_TEMPLATE.format(
            base=BASE_CONFIG, values=pprint.pformat(values, width=100, sort_dicts=False)
        )
        notes = common_mismatches(cfg) + [
            "the backbone is SimpleDet's MSRA ResNet-50 v1 (stride in the 1x1 convolution, caffe style)",
            "anchors: one scale (8 x stride) per FPN level; model.anchors.sizes "
            f"{list(cfg.model.anchors.sizes)} "
            "match it only for strides 4..64",
            f"images padded to {min(cfg.input.min_size_train)} x {cfg.input.max_size_train} (a fixed shape), "
            "not to the batch's largest image",
            "the RoIAlign is SimpleDet's own (sampling and alignment not configurable here)",
            "the regression losses are SimpleDet's smooth L1 (fixed betas)",
            f"SimpleDet's loop runs whole epochs: stop_after.py stops it once the log shows iteration "
            f"{cfg.benchmark.iters}",
        ]
        command = "cp /mrcnn-bench/mrcnn_bench.py config/ && " + shell(
            "python",
            "/mrcnn-bench/stop_after.py",
            str(cfg.benchmark.iters),
            r"Iter: (\d+)/",
            "--",
            "python",
            "detection_train.py",
            "--config",
            "config/mrcnn_bench.py",
        )
        return Translation({"mrcnn_bench.py": module, "stop_after.py": STOP_AFTER}, command, notes)


CONFIG_TEMPLATE = '''"""Written by mrcnn-bench: SimpleDet's {base} with the canonical values set on its
classes.

Copy this file to SimpleDet's config/ folder (the container command does). get_config() reads the base
config's source, sets each class attribute named below where the class body assigns it, and runs it.
"""
import ast
import os

VALUES = {values}
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.path.basename("{base}"))


class _SetValues(ast.NodeTransformer):
    def __init__(self):
        self.path, self.done = [], set()

    def visit_ClassDef(self, node):
        self.path.append(node.name)
        self.generic_visit(node)
        self.path.pop()
        return node

    def visit_Assign(self, node):
        if self.path and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            key = ".".join(self.path + [node.targets[0].id])
            if key in VALUES:
                node.value = ast.parse(repr(VALUES[key]), mode="eval").body
                self.done.add(key)
        return node


def get_config(is_train):
    tree = ast.parse(open(BASE).read(), BASE)
    setter = _SetValues()
    tree = ast.fix_missing_locations(setter.visit(tree))
    missing = sorted(set(VALUES) - setter.done)
    if missing:
        raise KeyError("mrcnn-bench: not assigned in %s: %s" % (BASE, ", ".join(missing)))
    scope = {{"__name__": "config.mrcnn_bench_base", "__file__": BASE}}
    exec(compile(tree, BASE, "exec"), scope)
    return scope["get_config"](is_train)
'''

SYSTEM = SimpleDet(
    "simpledet",
    "SimpleDet (MXNet)",
    "https://github.com/TuSimple/simpledet",
    log_format="speedometer",
    workdir="/simpledet",
)
