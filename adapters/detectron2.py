"""detectron2's Mask R-CNN R-50-FPN, trained by its own DefaultTrainer (or AMPTrainer with AMP).

The canonical config becomes a detectron2 CfgNode; the COCO-format paths are registered as datasets;
the harness timer is a detectron2 hook placed right after detectron2's own IterationTimer and the LR
scheduler hook, so it stamps each iteration where detectron2's timer does.

Compatibility shims (applied only when the installed libraries need them, see ``_apply_shims``):
- Pillow >= 10 removed ``Image.LINEAR`` (detectron2 v0.6's ResizeTransform default): alias BILINEAR.
- numpy >= 1.24 removed ``np.bool`` (detectron2 v0.6's structures/masks.py): alias bool.
- detectron2 v0.6 wraps every model in DDP with ``device_ids=[local_rank]``, which DDP refuses for a
  CPU model: on CPU, ``create_ddp_model`` passes no device ids.
"""

from __future__ import annotations

import os
import tempfile

from ._common import (
    CAFFE_STYLE,
    PYTORCH_STYLE,
    LayoutConversion,
    attach_work_counters,
    count_result,
    data_spec,
    detections,
    forward_outputs,
    load_exact,
    load_initial_weights,
    num_classes,
    phase_probe,
    pillow_linear_alias,
    proposal_hparams,
    rule_notes,
    sampling_hparams,
    schedule_length,
    shifted,
    solver_hparams,
    stand_in_optimizer,
    step_scheduler,
    unsupported,
)
from .base import Adapter, DistInfo, UnsupportedConfig, python_version_of

_DATASET = "mrcnn_bench_train"
# the work rules detectron2 cannot run every way (Adapter.divergences): key -> (supported value?, what it
# does)
RULES = {
    "model.anchors.round_to_pixels": (
        lambda v: not v,
        "detectron2's DefaultAnchorGenerator keeps fractional corners (False only)",
    ),
    "model.rpn.low_quality_min_iou": (
        lambda v: v == 0,
        "detectron2's Matcher keeps a box's best anchors at any IoU (0 only)",
    ),
    "input.resize_rounding": (
        lambda v: v == "round",
        "detectron2's ResizeShortestEdge rounds the resized sides ('round' only)",
    ),
    "model.roi_heads.mask_target": (
        lambda v: v != "bitmask_soft",
        "detectron2 rasterises polygons or binarises aligned "
        "RoIAlign crops of bitmasks (INPUT.MASK_FORMAT); it trains with 'bitmask_binarized'",
    ),
}


def _apply_shims(device: str | None = None) -> list[str]:
    applied = []
    import numpy as np

    if pillow_linear_alias():
        applied.append("PIL.Image.LINEAR = BILINEAR")
    if "bool" not in np.__dict__:
        np.bool = bool
        applied.append("numpy.bool = bool")
    if device == "cpu":
        import detectron2.engine.defaults as defaults
        from detectron2.utils import comm
        from torch.nn.parallel import DistributedDataParallel

        def create_ddp_model_cpu(model, *, fp16_compression=False, **kwargs):
            if comm.get_world_size() == 1:
                return model
            return DistributedDataParallel(model, device_ids=None, **kwargs)

        defaults.create_ddp_model = create_ddp_model_cpu
        applied.append("create_ddp_model without device_ids on CPU")
    return applied


# ------------------------------------------------------------- torchvision's layout <-> detectron2's
_FROM_TORCHVISION = [
    (r"^backbone\.body\.conv1\.(\w+)$", r"backbone.bottom_up.stem.conv1.\1"),
    (r"^backbone\.body\.bn1\.(\w+)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (
        r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.(\w+)$",
        shifted("backbone.bottom_up.res{}.{}.conv{}.{}", 1),
    ),
    (
        r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)$",
        shifted("backbone.bottom_up.res{}.{}.conv{}.norm.{}", 1),
    ),
    (
        r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.(\w+)$",
        shifted("backbone.bottom_up.res{}.{}.shortcut.{}", 1),
    ),
    (
        r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)$",
        shifted("backbone.bottom_up.res{}.{}.shortcut.norm.{}", 1),
    ),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)$", shifted("backbone.fpn_lateral{}.{}", 2)),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)$", shifted("backbone.fpn_output{}.{}", 2)),
    (r"^rpn\.head\.conv\.0\.0\.", "proposal_generator.rpn_head.conv."),
    (r"^rpn\.head\.cls_logits\.", "proposal_generator.rpn_head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "proposal_generator.rpn_head.anchor_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.(\d)\.0\.(\w+)$", shifted("roi_heads.mask_head.mask_fcn{}.{}", 1)),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
]
_TO_TORCHVISION = [
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)$", r"backbone.body.bn1.\1"),
    (r"^backbone\.bottom_up\.stem\.conv1\.(\w+)$", r"backbone.body.conv1.\1"),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)$",
        shifted("backbone.body.layer{}.{}.bn{}.{}", -1),
    ),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.(\w+)$",
        shifted("backbone.body.layer{}.{}.conv{}.{}", -1),
    ),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$",
        shifted("backbone.body.layer{}.{}.downsample.1.{}", -1),
    ),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.(\w+)$",
        shifted("backbone.body.layer{}.{}.downsample.0.{}", -1),
    ),
    (r"^backbone\.fpn_lateral(\d)\.(\w+)$", shifted("backbone.fpn.inner_blocks.{}.0.{}", -2)),
    (r"^backbone\.fpn_output(\d)\.(\w+)$", shifted("backbone.fpn.layer_blocks.{}.0.{}", -2)),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
    (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)$", shifted("roi_heads.mask_head.{}.0.{}", -1)),
    (r"^roi_heads\.mask_head\.deconv\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_heads\.mask_head\.predictor\.", "roi_heads.mask_predictor.mask_fcn_logits."),
]
# the framework's classifier, box regressor and mask predictor: background last, no background slot
_HEADS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)

_LAYOUT = LayoutConversion("detectron2", _FROM_TORCHVISION, _TO_TORCHVISION, _HEADS)
from_torchvision, to_torchvision = _LAYOUT.from_torchvision, _LAYOUT.to_torchvision


class Detectron2Adapter(Adapter):
    name = "detectron2"
    install_hint = (
        "make detectron2 (pb1-detectron2==0.6 from PyPI, patched; see scripts/install_detectron2.py)"
    )

    def available(self):
        ok, info = python_version_of("detectron2.config")
        if not ok:
            return ok, info
        import detectron2

        return True, detectron2.__version__

    # ----------------------------------------------------------------- translate
    def translate(self, cfg, data=None):
        """detectron2's default config (get_cfg) with the canonical values set in it, one section at a
        time: model, input and data, solver, runtime."""
        from detectron2.config import get_cfg

        _check_supported(cfg, self.task.trains)
        d2cfg = get_cfg()
        _set_model(d2cfg, cfg, data)
        _set_input(d2cfg, cfg)
        _set_solver(d2cfg, cfg)
        _set_runtime(d2cfg, cfg, data)
        return d2cfg

    # ------------------------------------------------------- effective hparams
    def effective_hparams(self, native) -> dict:
        """Read back from detectron2's CfgNode as its builders use it, section by section."""
        d2cfg = native
        world = d2cfg.MRCNN_BENCH.WORLD_SIZE
        return {
            **_model_hparams(d2cfg),
            **_input_hparams(d2cfg),
            # warm-up and steps from what detectron2's own scheduler does with this config, not from its keys
            **solver_hparams(
                ims_per_process=d2cfg.SOLVER.IMS_PER_BATCH // world,
                base_lr=d2cfg.SOLVER.BASE_LR,
                momentum=d2cfg.SOLVER.MOMENTUM,
                weight_decay=d2cfg.SOLVER.WEIGHT_DECAY,
                weight_decay_norm=d2cfg.SOLVER.WEIGHT_DECAY_NORM,
                warmup_method=d2cfg.SOLVER.WARMUP_METHOD,
                lrs=self.lr_trajectory(d2cfg, schedule_length(self._solver(d2cfg))),
            ),
            "info.backbone_style": CAFFE_STYLE if d2cfg.MODEL.RESNETS.STRIDE_IN_1X1 else PYTORCH_STYLE,
            "info.roi_low_quality_matches": False,  # ROIHeads' Matcher(allow_low_quality_matches=False)
            "info.resize_interpolation": "bilinear on uint8 pixels (PIL, ResizeTransform)",
            "info.roi_gt_as_proposals": d2cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT,
            "_notes": rule_notes(RULES),
        }

    def divergences(self, cfg) -> dict:
        return unsupported(cfg, RULES)

    def torchvision_names(self, state: dict) -> dict:
        return to_torchvision(state)

    def forward_features(self, cfg, images) -> dict:
        native = self.translate(cfg)
        _apply_shims(cfg.benchmark.device)
        from detectron2.modeling import build_model

        model = build_model(native).train()
        load_exact(
            model, from_torchvision(load_initial_weights(cfg.model.init_weights)), cfg.model.init_weights
        )
        features = model.backbone(images)
        rpn = model.proposal_generator
        levels = [features[f] for f in rpn.in_features]
        return forward_outputs(levels, *rpn.rpn_head(levels))

    @staticmethod
    def _solver(d2cfg) -> dict:
        return dict(
            max_iter=d2cfg.SOLVER.MAX_ITER,
            warmup_iters=d2cfg.SOLVER.WARMUP_ITERS,
            steps=list(d2cfg.SOLVER.STEPS),
        )

    def lr_trajectory(self, native, n: int) -> list[float]:
        """The learning rate of iterations 0..n-1 as detectron2's ``build_lr_scheduler`` (what
        DefaultTrainer calls) sets it; its LRScheduler hook steps it once per iteration."""
        from detectron2.solver import build_lr_scheduler

        optimizer = stand_in_optimizer(native.SOLVER.BASE_LR)
        return step_scheduler(optimizer, build_lr_scheduler(native, optimizer).step, n)

    # ----------------------------------------------------------------- train
    def train(self, cfg, data, timer, dist: DistInfo, native=None) -> dict:
        native = self.translated(cfg, data, native)
        shims = _apply_shims(cfg.benchmark.device)
        import torch
        import torch.distributed as tdist
        from detectron2.utils import comm

        if dist.distributed and comm._LOCAL_PROCESS_GROUP is None:
            # What detectron2's own launch() does in each worker: a process group per machine.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
            for machine in range(dist.world_size // local_world):
                ranks = list(range(machine * local_world, (machine + 1) * local_world))
                group = tdist.new_group(ranks)
                if dist.rank in ranks:
                    comm._LOCAL_PROCESS_GROUP = group
        _register_train_set(native)
        per_process = native.SOLVER.IMS_PER_BATCH // dist.world_size

        from ._detectron2_hooks import OrderedTrainer

        torch.manual_seed(cfg.benchmark.seed + dist.rank)
        trainer = OrderedTrainer(native, timer, per_process)
        # The schedule was built for SOLVER.MAX_ITER; the loop stops after the benchmark's iterations.
        trainer.max_iter = native.MRCNN_BENCH.ITERS
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        attach_work_counters(
            timer,
            backbone=model.backbone,
            rpn=model.proposal_generator,
            box_pooler=model.roi_heads.box_pooler,
            mask_pooler=model.roi_heads.mask_pooler,
        )
        # the RPN's sampled anchors, per image: label 1 positive, 0 negative, -1 not sampled
        count_result(
            timer,
            model.proposal_generator,
            "_subsample_labels",
            "rpn_positives",
            lambda label: int((label == 1).sum()),
        )
        roi = model.roi_heads
        probe = phase_probe(
            cfg,
            timer,
            dist.device,
            model,
            ranges=self.task.phase_ranges,
            # preprocess_image is a method (normalise, pad) of GeneralizedRCNN, not a module
            preprocess=[(model, "preprocess_image")],
            backbone=[model.backbone.bottom_up],
            backbone_fpn=[model.backbone],
            rpn=[model.proposal_generator],
            rpn_head=[model.proposal_generator.rpn_head],
            roi_heads=[roi],
            roi_pooling=[roi.box_pooler, roi.mask_pooler],
            box_head=[roi.box_head, roi.box_predictor],
            mask_head=[roi.mask_head],
        )
        if probe:
            probe.notes.append(
                "detectron2's mask head computes the mask loss inside its forward: in 'mask head'"
            )
        if native.MRCNN_BENCH.CHANNELS_LAST:
            trainer.model.to(memory_format=torch.channels_last)
        trainer.resume_or_load(resume=False)
        if native.MRCNN_BENCH.INIT_WEIGHTS:
            load_exact(
                model,
                from_torchvision(load_initial_weights(native.MRCNN_BENCH.INIT_WEIGHTS)),
                native.MRCNN_BENCH.INIT_WEIGHTS,
            )
        trainer.train()
        self.trained_model = model
        return {"native_config": native.dump(), "shims": shims}

    def input_pipeline(self, cfg, data, dist: DistInfo, native=None):
        """The trainer's own ``build_train_loader`` (its dataset dicts, DatasetMapper, the run's order as its
        sampler, its collate) and the copy to the device its model makes of each image and its instances."""
        import torch

        native = self.translated(cfg, data, native)
        _apply_shims(cfg.benchmark.device)
        _register_train_set(native)
        from ._detectron2_hooks import OrderedTrainer

        device = torch.device(dist.device)

        def to_device(batch) -> int:
            moved = [d["image"].to(device, non_blocking=True) for d in batch]
            moved += [d["instances"].to(device) for d in batch if "instances" in d]
            return len(batch)

        return iter(OrderedTrainer.build_train_loader(native)), to_device

    def loader_stages(self, native):
        from detectron2.data import build, detection_utils
        from detectron2.data.dataset_mapper import DatasetMapper
        from mrcnn_bench.harness.data.stages import LoaderStages

        return LoaderStages(
            item=[(DatasetMapper, "__call__")],
            decode=[(detection_utils, "read_image")],
            collate=[(build, "trivial_batch_collator")],
            transform="ResizeShortestEdge and the flip on the host array, the annotations to Instances "
            "(polygon masks), the image to a tensor",
        )

    def predictor(self, cfg, data, dist: DistInfo, model=None, native=None):
        """What detectron2's DefaultPredictor does, for a batch: ResizeShortestEdge to INPUT.MIN_SIZE_TEST
        / MAX_SIZE_TEST on the host array, then the model in eval mode with each image's height and
        width, whose postprocessing pastes the masks at that size (pred_masks, thresholded at 0.5)."""
        native = self.translated(cfg, data, native)
        _apply_shims(cfg.benchmark.device)
        import torch
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        if model is None:
            model = build_model(native)  # on MODEL.DEVICE
            if cfg.model.init_weights:
                load_exact(
                    model,
                    from_torchvision(load_initial_weights(cfg.model.init_weights)),
                    cfg.model.init_weights,
                )
        model.eval()
        if cfg.benchmark.channels_last:
            model.to(memory_format=torch.channels_last)
        resize = T.ResizeShortestEdge([native.INPUT.MIN_SIZE_TEST] * 2, native.INPUT.MAX_SIZE_TEST)

        def predict(images):
            inputs = []
            for image in images:
                array = image.permute(1, 2, 0).numpy()  # H, W, C in INPUT.FORMAT (RGB)
                resized = resize.get_transform(array).apply_image(array)
                inputs.append(
                    {
                        "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                        "height": array.shape[0],
                        "width": array.shape[1],
                    }
                )
            out = []
            for result in model(inputs):
                inst = result["instances"]
                out.append(
                    detections(inst.pred_boxes.tensor, inst.scores, inst.pred_classes + 1, inst.pred_masks)
                )
            return out

        return predict


def _check_supported(cfg, training: bool) -> None:
    """What detectron2 v0.6 cannot run as asked, before it is asked to."""
    inp, bench, roi = cfg.input, cfg.benchmark, cfg.model.roi_heads
    if inp.horizontal_flip_prob not in (0.0, 0.5):
        raise UnsupportedConfig(
            "detectron2's RandomFlip in the default mapper has probability 0.5 (input.horizontal_flip_prob)"
        )
    if training and bench.dtype == "bf16":
        raise UnsupportedConfig("detectron2 v0.6's AMPTrainer is fp16 only (benchmark.dtype bf16)")
    if training and bench.dtype == "fp16" and bench.device != "cuda":
        raise UnsupportedConfig("detectron2 v0.6's AMPTrainer needs CUDA (benchmark.dtype fp16 on cpu)")
    if bench.grad_accum != 1:
        raise UnsupportedConfig("detectron2's trainers have no gradient accumulation (benchmark.grad_accum)")
    if roi.bg_iou_thresh != roi.fg_iou_thresh:
        raise UnsupportedConfig(
            "detectron2's ROI heads use one IoU threshold (model.roi_heads.bg_iou_thresh must equal "
            "fg_iou_thresh)"
        )


def _register_train_set(native) -> None:
    """The training split in detectron2's DatasetCatalog, as its COCO loader reads it: registered once per
    process and split, again when a later call of the same process names another split (the catalog would
    otherwise hand out the first one: tests and in-process checks build several)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    split = (str(native.MRCNN_BENCH.TRAIN_JSON), str(native.MRCNN_BENCH.TRAIN_IMAGES))
    if _DATASET in DatasetCatalog.list():
        if (
            MetadataCatalog.get(_DATASET).get("json_file") == split[0]
            and MetadataCatalog.get(_DATASET).get("image_root") == split[1]
        ):
            return
        DatasetCatalog.remove(_DATASET)
        MetadataCatalog.remove(_DATASET)
    register_coco_instances(_DATASET, {}, *split)


def _set_model(d2cfg, cfg, data) -> None:
    """MODEL: the ResNet + FPN, anchors, RPN, then the ROI heads (``_set_roi_heads``)."""
    model_cfg, rpn, bench = cfg.model, cfg.model.rpn, cfg.benchmark
    d2cfg.MODEL.DEVICE = bench.device
    d2cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    d2cfg.MODEL.MASK_ON = True
    d2cfg.MODEL.WEIGHTS = (
        "" if model_cfg.init_weights else (model_cfg.weights or "")
    )  # the shared initialisation holds model.weights
    d2cfg.MODEL.PIXEL_MEAN = list(model_cfg.pixel_mean)
    d2cfg.MODEL.PIXEL_STD = list(model_cfg.pixel_std)
    d2cfg.INPUT.FORMAT = "RGB"  # the statistics above are RGB (pytorch-style ResNet)
    d2cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    d2cfg.MODEL.BACKBONE.FREEZE_AT = model_cfg.effective_freeze_at
    d2cfg.MODEL.RESNETS.DEPTH = model_cfg.backbone.depth
    d2cfg.MODEL.RESNETS.NORM = model_cfg.effective_norm
    d2cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # pytorch-style (torchvision) ResNet: stride in the 3x3
    d2cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    d2cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    d2cfg.MODEL.FPN.OUT_CHANNELS = model_cfg.fpn_out_channels
    d2cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s] for s in model_cfg.anchors.sizes]
    d2cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(model_cfg.anchors.aspect_ratios)]
    d2cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    d2cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d2cfg.MODEL.RPN.IOU_THRESHOLDS = [rpn.bg_iou_thresh, rpn.fg_iou_thresh]
    d2cfg.MODEL.RPN.IOU_LABELS = [0, -1, 1]
    # sides > MIN_SIZE kept (Boxes.nonempty(threshold)); the low-quality rule is set on the built RPN's
    # matcher (RPN.from_config makes it with allow_low_quality_matches=True):
    # MRCNN_BENCH.RPN_LOW_QUALITY_MATCHES
    d2cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = rpn.min_proposal_size
    d2cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = rpn.batch_size_per_image
    d2cfg.MODEL.RPN.POSITIVE_FRACTION = rpn.positive_fraction
    d2cfg.MODEL.RPN.NMS_THRESH = rpn.nms_thresh
    d2cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = rpn.pre_nms_topk_train
    d2cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = rpn.post_nms_topk_train
    d2cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = rpn.pre_nms_topk_test
    d2cfg.MODEL.RPN.POST_NMS_TOPK_TEST = rpn.post_nms_topk_test
    d2cfg.MODEL.RPN.SMOOTH_L1_BETA = rpn.smooth_l1_beta
    d2cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # with beta 0 it is the L1 loss
    _set_roi_heads(d2cfg, cfg, data)


def _set_roi_heads(d2cfg, cfg, data) -> None:
    """MODEL.ROI_HEADS and its box and mask heads (poolers, layers, losses, test thresholds)."""
    roi = cfg.model.roi_heads
    d2cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    d2cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    d2cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes(cfg, data)
    d2cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [roi.fg_iou_thresh]
    d2cfg.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
    d2cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = roi.batch_size_per_image
    d2cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = roi.positive_fraction
    d2cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = roi.score_thresh_test
    d2cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = roi.nms_thresh_test
    d2cfg.TEST.DETECTIONS_PER_IMAGE = roi.detections_per_image
    pooler = "ROIAlignV2" if roi.pooler_aligned else "ROIAlign"
    d2cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    d2cfg.MODEL.ROI_BOX_HEAD.NUM_FC = roi.box_head_num_fc
    d2cfg.MODEL.ROI_BOX_HEAD.FC_DIM = roi.box_head_fc_dim
    d2cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
    d2cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = roi.smooth_l1_beta
    d2cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
    d2cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = roi.box_pooler_resolution
    d2cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = roi.pooler_sampling_ratio
    d2cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = pooler
    d2cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    d2cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = roi.mask_head_num_conv
    d2cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = roi.mask_head_conv_dim
    d2cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = roi.mask_pooler_resolution
    d2cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = roi.pooler_sampling_ratio
    d2cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = pooler


def _set_input(d2cfg, cfg) -> None:
    """INPUT, DATASETS, DATALOADER: sizes, flip, masks as polygons, the run's one data order."""
    inp, bench = cfg.input, cfg.benchmark
    d2cfg.INPUT.MIN_SIZE_TRAIN = tuple(inp.min_size_train)
    d2cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    d2cfg.INPUT.MAX_SIZE_TRAIN = inp.max_size_train
    d2cfg.INPUT.MIN_SIZE_TEST = inp.min_size_test
    d2cfg.INPUT.MAX_SIZE_TEST = inp.max_size_test
    d2cfg.INPUT.RANDOM_FLIP = "horizontal" if inp.horizontal_flip_prob > 0 else "none"
    d2cfg.INPUT.MASK_FORMAT = "polygon" if cfg.model.roi_heads.mask_target == "polygon" else "bitmask"
    d2cfg.DATASETS.TRAIN = (_DATASET,)
    d2cfg.DATASETS.TEST = ()
    d2cfg.DATALOADER.NUM_WORKERS = bench.num_workers
    d2cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = inp.filter_empty_annotations
    # batches come from the run's one data order (grouped there by aspect ratio, as detectron2 does)
    d2cfg.DATALOADER.ASPECT_RATIO_GROUPING = False


def _set_solver(d2cfg, cfg) -> None:
    """SOLVER: the global batch, SGD, warm-up and steps over the canonical schedule's length."""
    sol, bench = cfg.solver, cfg.benchmark
    d2cfg.SOLVER.IMS_PER_BATCH = cfg.solver.ims_per_batch  # global: detectron2 divides by the world size
    d2cfg.SOLVER.BASE_LR = sol.base_lr
    d2cfg.SOLVER.MOMENTUM = sol.momentum
    d2cfg.SOLVER.WEIGHT_DECAY = sol.weight_decay
    d2cfg.SOLVER.WEIGHT_DECAY_NORM = sol.weight_decay_norm
    d2cfg.SOLVER.WARMUP_METHOD = sol.warmup_method
    d2cfg.SOLVER.WARMUP_ITERS = sol.warmup_iters
    d2cfg.SOLVER.WARMUP_FACTOR = sol.warmup_factor
    d2cfg.SOLVER.STEPS = tuple(sol.steps)
    d2cfg.SOLVER.GAMMA = sol.gamma
    # The canonical schedule's length: detectron2 places warm-up (WARMUP_ITERS / MAX_ITER of the
    # schedule, capped at 1) and steps by it. The run stops after benchmark.iters (see train()).
    d2cfg.SOLVER.MAX_ITER = sol.max_iter
    d2cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    d2cfg.SOLVER.AMP.ENABLED = bench.dtype == "fp16"


def _set_runtime(d2cfg, cfg, data) -> None:
    """Evaluation off, seed, output folder, and what the harness reads back (MRCNN_BENCH)."""
    model_cfg, bench = cfg.model, cfg.benchmark
    d2cfg.TEST.EVAL_PERIOD = 0
    d2cfg.SEED = bench.seed
    d2cfg.VIS_PERIOD = 0
    d2cfg.OUTPUT_DIR = os.path.join(tempfile.gettempdir(), "mrcnn-bench-detectron2")
    d2cfg.set_new_allowed(True)
    d2cfg.MRCNN_BENCH = type(d2cfg)(
        {
            "TRAIN_JSON": str(data.train_json) if data else "",
            "TRAIN_IMAGES": str(data.train_images) if data else "",
            "WORLD_SIZE": bench.gpus,
            "CHANNELS_LAST": bench.channels_last,
            "ITERS": bench.iters,
            "INIT_WEIGHTS": model_cfg.init_weights or "",
            "RPN_LOW_QUALITY_MATCHES": model_cfg.rpn.low_quality_matches,
            "ORDER": type(d2cfg)(data_spec(cfg, data)["order"]),
        }
    )
    d2cfg.freeze()


# ------------------------------------------------------------- effective hparams, by section
def _model_hparams(d2cfg) -> dict:
    """MODEL.*: the backbone, anchors, RPN and ROI heads."""
    pooler_aligned = d2cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    return {
        "model.num_classes": d2cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        "model.pixel_mean": list(d2cfg.MODEL.PIXEL_MEAN),
        "model.pixel_std": list(d2cfg.MODEL.PIXEL_STD),
        "model.backbone.depth": d2cfg.MODEL.RESNETS.DEPTH,
        "model.backbone.freeze_at": d2cfg.MODEL.BACKBONE.FREEZE_AT,
        "model.backbone.norm": d2cfg.MODEL.RESNETS.NORM,
        "model.fpn_out_channels": d2cfg.MODEL.FPN.OUT_CHANNELS,
        "model.anchors.sizes": [s[0] for s in d2cfg.MODEL.ANCHOR_GENERATOR.SIZES],
        "model.anchors.aspect_ratios": list(d2cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),
        **sampling_hparams(
            "rpn",
            d2cfg.MODEL.RPN.IOU_THRESHOLDS[1],
            d2cfg.MODEL.RPN.IOU_THRESHOLDS[0],
            d2cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
            d2cfg.MODEL.RPN.POSITIVE_FRACTION,
        ),
        # post_nms_topk per image: detectron2 >= 0.1 (Detectron 1: per batch)
        **proposal_hparams(
            d2cfg.MODEL.RPN.NMS_THRESH,
            d2cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN,
            d2cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
            d2cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
            d2cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        ),
        # set on the built matcher
        "model.rpn.low_quality_matches": d2cfg.MRCNN_BENCH.RPN_LOW_QUALITY_MATCHES,
        "model.rpn.low_quality_min_iou": 0.0,  # Matcher._set_low_quality_matches_: any IoU
        "model.rpn.min_proposal_size": d2cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
        "model.anchors.round_to_pixels": False,  # DefaultAnchorGenerator.generate_cell_anchors: no rounding
        "model.roi_heads.mask_target": "polygon"
        if d2cfg.INPUT.MASK_FORMAT == "polygon"
        else "bitmask_binarized",
        **sampling_hparams(
            "roi_heads",
            d2cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0],
            d2cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0],
            d2cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            d2cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION,
        ),
        "model.roi_heads.box_pooler_resolution": d2cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
        "model.roi_heads.mask_pooler_resolution": d2cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
        "model.roi_heads.pooler_sampling_ratio": d2cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        "model.roi_heads.pooler_aligned": pooler_aligned,
        "model.roi_heads.box_head_num_fc": d2cfg.MODEL.ROI_BOX_HEAD.NUM_FC,
        "model.roi_heads.box_head_fc_dim": d2cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
        "model.roi_heads.mask_head_num_conv": d2cfg.MODEL.ROI_MASK_HEAD.NUM_CONV,
        "model.roi_heads.mask_head_conv_dim": d2cfg.MODEL.ROI_MASK_HEAD.CONV_DIM,
        "model.roi_heads.score_thresh_test": d2cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "model.roi_heads.nms_thresh_test": d2cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        "model.roi_heads.detections_per_image": d2cfg.TEST.DETECTIONS_PER_IMAGE,
        # not canonical keys, shown so the table says how each framework differs
        "model.rpn.smooth_l1_beta": d2cfg.MODEL.RPN.SMOOTH_L1_BETA
        if d2cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE == "smooth_l1"
        else None,
        "model.roi_heads.smooth_l1_beta": (
            d2cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA
            if d2cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE == "smooth_l1"
            else None
        ),
    }


def _input_hparams(d2cfg) -> dict:
    """INPUT.* and DATALOADER.*: sizes, flips, filtering, grouping."""
    flip = 0.5 if d2cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0  # RandomFlip's fixed probability
    return {
        "input.min_size_train": list(d2cfg.INPUT.MIN_SIZE_TRAIN),
        "input.max_size_train": d2cfg.INPUT.MAX_SIZE_TRAIN,
        "input.min_size_test": d2cfg.INPUT.MIN_SIZE_TEST,
        "input.max_size_test": d2cfg.INPUT.MAX_SIZE_TEST,
        "input.horizontal_flip_prob": flip,
        "input.resize_rounding": "round",  # ResizeShortestEdge.get_output_shape: int(side + 0.5)
        "input.filter_empty_annotations": d2cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        # in the run's data order, which its sampler follows (its own grouping off: it would regroup)
        "input.aspect_ratio_grouping": d2cfg.MRCNN_BENCH.ORDER.group_by_aspect
        and not d2cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    }


ADAPTERS = [Detectron2Adapter()]
