"""mmdetection 3.x's Mask R-CNN R-50-FPN, trained by mmengine's Runner with an IterBasedTrainLoop.

The canonical config is written into mmdet's own ``mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` (loaded
from the installed package, so the model is the one mmdet ships: its pytorch-style ResNet, mmcv's
RoIAlign and NMS, L1 box losses, its assigners and samplers); only the values the canonical config
names are changed, and ``effective_hparams`` reads them back out of the built mmengine Config.
The harness timer is an mmengine hook that runs after mmengine's own IterTimerHook and the
ParamSchedulerHook, i.e. after the optimizer step and the LR update of each iteration.

mmdet's stock configs differ from the other implementations in ways the canonical keys set: its RPN
assigner keeps a box's best anchors only at IoU >= 0.3 (``min_pos_iou``; set from
``model.rpn.low_quality_min_iou``), its loader turns polygons into bitmaps (``poly2mask``; set from
``model.roi_heads.mask_target``), its proposals' minimum size (``min_bbox_size``). The ``info.*`` rows
list what stays mmdet's own: the RoI assigner's low-quality matching (at the foreground threshold, so
it adds nothing), ground-truth boxes added as proposals. mmdet also ships caffe-style R-50 configs
(``mask-rcnn_r50-caffe_fpn``:
stride in the 1x1 conv, BGR input without std, caffe weights); the 1x config used here is pytorch-style
like the other implementations, and the table's ``info.backbone_style`` row says so.

Install: ``make mmdet`` (scripts/install_mmdet.py: mmcv 2.1.0 built from its sdist, cached as a wheel).
With gradient accumulation, mmengine steps the LR schedule once per micro-batch; the schedule's
iteration counts are multiplied by ``benchmark.grad_accum`` so warm-up and steps land on the same
optimizer steps as elsewhere.
"""

from __future__ import annotations

import json
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
    ordered_batches,
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
from .base import Adapter, DistInfo, UnsupportedConfig

# in the installed package (mmdet/.mim/configs); read by path: mmengine's "mmdet::" lookup needs pkg_resources
STOCK_CONFIG = "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"
# the sampler that follows the run's data order, registered in mmengine's DATA_SAMPLERS by train()
ORDER_SAMPLER = "MrcnnBenchOrderedSampler"
# after ParamSchedulerHook (LOW = 70), before CheckpointHook (VERY_LOW = 90)
HOOK_PRIORITY = 75
# the work rules mmdet cannot run every way (Adapter.divergences): key -> (supported value?, what it does)
RULES = {
    "model.anchors.round_to_pixels": (
        lambda v: not v,
        "mmdet's AnchorGenerator keeps fractional corners (False only)",
    ),
    "input.resize_rounding": (
        lambda v: v == "round",
        "mmdet's Resize rounds the resized sides (mmcv.rescale_size; 'round' only)",
    ),
    "model.roi_heads.mask_target": (
        lambda v: v != "bitmask_soft",
        "mmdet's mask_target binarises its crops ('polygon' or "
        "'bitmask_binarized'); it trains with 'bitmask_binarized'",
    ),
}


def _class_names(cfg, data) -> tuple[str, ...]:
    """mmdet's CocoDataset selects categories by name: the training set's, in its order."""
    n = num_classes(cfg, data)
    if data is None:
        return tuple(f"class_{i}" for i in range(n))
    categories = json.loads(data.train_json.read_text())["categories"]
    names = tuple(mmcfg["name"] for mmcfg in sorted(categories, key=lambda mmcfg: mmcfg["id"]))
    if len(names) != n:
        raise UnsupportedConfig(
            f"model.num_classes is {n} but {data.train_json} has {len(names)} categories; mmdet trains on "
            "the file's categories"
        )
    return names


def _box_loss(beta: float, stock: dict) -> dict:
    """A box regression loss config: mmdet's L1Loss for beta 0, else SmoothL1Loss with that beta (the
    stock loss weight kept)."""
    weight = stock.get("loss_weight", 1.0)
    return (
        dict(type="L1Loss", loss_weight=weight)
        if beta == 0
        else dict(type="SmoothL1Loss", beta=beta, loss_weight=weight)
    )


def _beta_of(loss: dict) -> float | None:
    """The smooth-L1 beta a box loss config computes (0 for L1Loss), None for another kind of loss."""
    return {"L1Loss": 0.0, "SmoothL1Loss": loss.get("beta", 1.0)}.get(loss["type"])


def _norm(norm: str) -> tuple[dict, bool]:
    """(norm_cfg, norm_eval) for a canonical norm."""
    if norm == "FrozenBN":  # statistics and affine parameters fixed
        return dict(type="BN", requires_grad=False), True
    if norm == "BN":
        return dict(type="BN", requires_grad=True), False
    if norm == "SyncBN":
        return dict(type="SyncBN", requires_grad=True), False
    raise UnsupportedConfig(f"model.backbone.norm {norm!r} has no mmdet equivalent")


# ------------------------------------------------------------------ torchvision's layout <-> mmdet's
_FROM_TORCHVISION = [
    (r"^backbone\.body\.", "backbone."),  # mmdet's ResNet keeps torchvision's names
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.", r"neck.fpn_convs.\1.conv."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.rpn_conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn_head.rpn_cls."),
    (r"^rpn\.head\.bbox_pred\.", "rpn_head.rpn_reg."),
    (r"^roi_heads\.box_head\.fc(\d)\.(\w+)$", shifted("roi_head.bbox_head.shared_fcs.{}.{}", -6)),
    (r"^roi_heads\.box_predictor\.cls_score\.", "roi_head.bbox_head.fc_cls."),
    (r"^roi_heads\.box_predictor\.bbox_pred\.", "roi_head.bbox_head.fc_reg."),
    (r"^roi_heads\.mask_head\.(\d)\.0\.", r"roi_head.mask_head.convs.\1.conv."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_head.mask_head.upsample."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_head.mask_head.conv_logits."),
]
_TO_TORCHVISION = [
    (r"^neck\.lateral_convs\.(\d)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^backbone\.", "backbone.body."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    (r"^roi_head\.bbox_head\.shared_fcs\.(\d)\.(\w+)$", shifted("roi_heads.box_head.fc{}.{}", 6)),
    (r"^roi_head\.bbox_head\.fc_cls\.", "roi_heads.box_predictor.cls_score."),
    (r"^roi_head\.bbox_head\.fc_reg\.", "roi_heads.box_predictor.bbox_pred."),
    (r"^roi_head\.mask_head\.convs\.(\d)\.conv\.", r"roi_heads.mask_head.\1.0."),
    (r"^roi_head\.mask_head\.upsample\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_head\.mask_head\.conv_logits\.", "roi_heads.mask_predictor.mask_fcn_logits."),
]
# the framework's classifier, box regressor and mask predictor: background last, no background slot
_HEADS = ("roi_head.bbox_head.fc_cls.", "roi_head.bbox_head.fc_reg.", "roi_head.mask_head.conv_logits.")

_LAYOUT = LayoutConversion("mmdet", _FROM_TORCHVISION, _TO_TORCHVISION, _HEADS)
from_torchvision, to_torchvision = _LAYOUT.from_torchvision, _LAYOUT.to_torchvision


def _ordered_sampler(dataset, seed, order: dict, train_json: str):
    """mmengine's sampler interface (built with the dataset and a seed) over the run's data order."""
    from mmengine.dist import get_dist_info

    rank, world_size = get_dist_info()
    image_ids = [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]
    return ordered_batches(
        dict(train_json=train_json, order=order),
        DistInfo(rank=rank, world_size=world_size),
        image_ids,
        f"mmdet ({train_json})",
        flat=True,
    )


def _count_work(model, timer) -> None:
    """The work counters on mmdet's modules: RoIs and positives from the RoI extractors' outputs; the
    proposals from what ``rpn_head.loss_and_predict`` (a method, not a forward) returns; the RPN's sampled
    positive anchors from each image's ``_get_targets_single`` (its ``pos_inds``, the fifth result)."""
    attach_work_counters(
        timer,
        backbone=model.backbone,
        rpn=None,
        box_pooler=model.roi_head.bbox_roi_extractor,
        mask_pooler=model.roi_head.mask_roi_extractor,
    )
    count_result(
        timer, model.rpn_head, "loss_and_predict", "proposals", lambda out: sum(len(p) for p in out[1])
    )
    count_result(timer, model.rpn_head, "_get_targets_single", "rpn_positives", lambda out: len(out[4]))


def anchors_of_the_padded_batch(preprocessor) -> str:
    """mmdet's RPN takes as candidates only the anchors inside each image's own padding to 32 (its valid
    flags come from the image's ``pad_shape``); torchvision's, detectron2's and the reference's take every
    anchor of the padded batch, so a smaller image of a batch has more negatives to draw from there. Given
    the batch's padded shape as every image's ``pad_shape``, mmdet draws from the same candidates (found by
    ``parity --check-step``: its objectness loss 0.6 % off with the same batch and draw). Returns the shim's
    line."""
    own = preprocessor._get_pad_shape

    def batch_pad_shape(data):
        shapes = own(data)
        batch = (max(h for h, _ in shapes), max(w for _, w in shapes))
        return [batch] * len(shapes)

    preprocessor._get_pad_shape = batch_pad_shape
    return "the RPN's anchors of the whole padded batch are candidates (each image's pad_shape = the batch's)"


class MMDetAdapter(Adapter):
    name = "mmdet"
    install_hint = (
        "make mmdet (mmengine 0.10.7, mmdet 3.3.0 and mmcv 2.1.0 built from its sdist; "
        "see scripts/install_mmdet.py)"
    )

    def available(self):
        try:
            import mmcv
            import mmcv.ops  # noqa: F401 - the compiled ops Mask R-CNN needs (mmcv._ext)
            import mmdet
            import mmengine
        except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable, with the reason
            return False, f"{type(e).__name__}: {e}"
        return True, f"{mmdet.__version__} (mmcv {mmcv.__version__}, mmengine {mmengine.__version__})"

    def divergences(self, cfg) -> dict:
        return unsupported(cfg, RULES)

    # ----------------------------------------------------------------- translate
    def translate(self, cfg, data=None):
        """mmdet's stock Mask R-CNN 1x config (its own file) with the canonical values set in it, one
        section at a time: model, data, schedule, runtime."""
        from pathlib import Path

        import mmdet
        from mmengine.config import Config

        _check_supported(cfg.benchmark, self.task.trains)
        stock = Path(mmdet.__file__).parent / ".mim" / "configs" / STOCK_CONFIG
        if not stock.is_file():
            raise FileNotFoundError(f"{stock}: mmdet's stock config is missing; reinstall with: make mmdet")
        mmcfg = Config.fromfile(stock)
        classes = _class_names(cfg, data)
        _set_model(mmcfg.model, cfg, classes)
        _set_data(mmcfg, cfg, data, classes)
        _set_schedule(mmcfg, cfg)
        _set_runtime(mmcfg, cfg)
        return mmcfg

    # ------------------------------------------------------- effective hparams
    def effective_hparams(self, native) -> dict:
        """Read back from the mmengine Config the Runner builds from, section by section."""
        mmcfg = native
        model = mmcfg.model
        accum = mmcfg.mrcnn_bench.grad_accum
        linear, steps = mmcfg.param_scheduler
        sgd = mmcfg.optim_wrapper.optimizer
        return {
            **_backbone_hparams(model),
            **_rpn_hparams(model.rpn_head, model.train_cfg, model.test_cfg),
            **_roi_hparams(
                model.roi_head, model.train_cfg, model.test_cfg, mmcfg.train_dataloader.dataset.pipeline
            ),
            **_input_hparams(mmcfg),
            # warm-up and steps from what mmengine's own schedulers do with this config, per optimizer step
            **solver_hparams(
                ims_per_process=mmcfg.train_dataloader.batch_size,
                base_lr=sgd.lr,
                momentum=sgd.momentum,
                weight_decay=sgd.weight_decay,
                weight_decay_norm=sgd.weight_decay
                * mmcfg.optim_wrapper.get("paramwise_cfg", {}).get("norm_decay_mult", 1.0),
                warmup_method={"LinearLR": "linear"}.get(linear["type"], linear["type"]),
                lrs=self.lr_trajectory(
                    mmcfg,
                    schedule_length(
                        dict(
                            max_iter=steps["end"] // accum,
                            warmup_iters=linear["end"] // accum,
                            steps=[milestone // accum for milestone in steps["milestones"]],
                        )
                    ),
                ),
            ),
            "_notes": {
                "model.backbone.norm": "mmdet's stock R-50 trains the BN affine parameters while keeping the "
                "statistics (norm_eval)",
                **rule_notes(RULES),
            },
        }

    def torchvision_names(self, state: dict) -> dict:
        return to_torchvision(state)

    def forward_features(self, cfg, images) -> dict:
        pillow_linear_alias()
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules()
        model = MODELS.build(self.translate(cfg).model).train()
        load_exact(
            model, from_torchvision(load_initial_weights(cfg.model.init_weights)), cfg.model.init_weights
        )
        features = list(model.extract_feat(images))
        return forward_outputs(features, *model.rpn_head(features))

    def lr_trajectory(self, native, n: int) -> list[float]:
        """The learning rate of optimizer steps 0..n-1 as mmengine's schedulers (built from the
        config's ``param_scheduler``, stepped by ParamSchedulerHook once per micro-batch) set it."""
        import mmengine.optim  # noqa: F401 - registers LinearLR, MultiStepLR, ... in PARAM_SCHEDULERS
        from mmengine.registry import PARAM_SCHEDULERS

        accum = native.mrcnn_bench.grad_accum
        optimizer = stand_in_optimizer(native.optim_wrapper.optimizer.lr)
        schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in native.param_scheduler]

        def step():
            for _ in range(accum):
                for scheduler in schedulers:
                    scheduler.step()

        return step_scheduler(optimizer, step, n)

    # ----------------------------------------------------------------- train
    def train(self, cfg, data, timer, dist: DistInfo, native=None) -> dict:
        native = self.translated(cfg, data, native)
        shims = (
            ["PIL.Image.LINEAR = BILINEAR (for detectron2, which mmdet imports when installed)"]
            if pillow_linear_alias()
            else []
        )
        import torch
        from mmengine.runner import Runner

        from ._mmdet_hooks import HarnessTimer

        accum = native.mrcnn_bench.grad_accum
        init_weights = native.mrcnn_bench.get("init_weights")
        images_per_step = native.train_dataloader.batch_size * accum
        native.launcher = "pytorch" if dist.distributed else "none"

        from mmengine.registry import DATA_SAMPLERS

        DATA_SAMPLERS.register_module(name=ORDER_SAMPLER, module=_ordered_sampler, force=True)
        runner = Runner.from_cfg(native)
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        shims.append(anchors_of_the_padded_batch(model.data_preprocessor))
        runner.register_hook(
            HarnessTimer(
                timer,
                images_per_step,
                accum,
                init_weights,
                lambda path: from_torchvision(load_initial_weights(path)),
            ),
            priority=HOOK_PRIORITY,
        )
        _count_work(model, timer)
        roi = model.roi_head
        probe = phase_probe(
            cfg,
            timer,
            dist.device,
            model,
            ranges=self.task.phase_ranges,
            preprocess=[model.data_preprocessor],
            backbone=[model.backbone],
            fpn=[model.neck],
            # mmdet's RPN and RoI head train through methods (loss_and_predict, loss); their convolutions
            # and heads are modules called inside them
            rpn=[(model.rpn_head, "loss_and_predict")],
            rpn_head=[model.rpn_head],
            roi_heads=[(roi, "loss")],
            roi_pooling=[roi.bbox_roi_extractor, roi.mask_roi_extractor],
            box_head=[roi.bbox_head],
            mask_head=[roi.mask_head],
        )
        if probe:
            probe.notes.append(
                "mmdet's data_preprocessor also copies the batch to the device: in 'preprocess'"
            )
        if native.mrcnn_bench.channels_last:
            runner.model.to(memory_format=torch.channels_last)
        runner.train()
        self.trained_model = model
        return {"native_config": native.pretty_text, "shims": shims}

    def input_pipeline(self, cfg, data, dist: DistInfo, native=None):
        """mmengine's ``Runner.build_dataloader`` over the config's train_dataloader (mmdet's CocoDataset and
        pipeline, the run's order as its sampler, pseudo_collate), as the runner builds it for training,
        and the copy to the device its data_preprocessor makes of the inputs and data samples."""
        import torch
        from mmengine.registry import DATA_SAMPLERS, init_default_scope
        from mmengine.runner import Runner

        native = self.translated(cfg, data, native)
        pillow_linear_alias()
        init_default_scope("mmdet")
        DATA_SAMPLERS.register_module(name=ORDER_SAMPLER, module=_ordered_sampler, force=True)
        device = torch.device(dist.device)

        def to_device(batch) -> int:
            moved = [t.to(device, non_blocking=True) for t in batch["inputs"]]
            moved += [sample.to(device) for sample in batch["data_samples"]]
            return len(batch["inputs"])

        loader = Runner.build_dataloader(native.train_dataloader, seed=cfg.benchmark.seed)
        return iter(loader), to_device

    def loader_stages(self, native):
        import mmcv
        from mmengine.dataset import BaseDataset
        from mmengine.registry import FUNCTIONS
        from mrcnn_bench.harness.data.stages import LoaderStages

        # build_dataloader looks pseudo_collate up in mmengine's FUNCTIONS registry when it builds the loader
        return LoaderStages(
            item=[(BaseDataset, "__getitem__")],
            decode=[(mmcv, "imfrombytes")],
            collate=[(FUNCTIONS._module_dict, "pseudo_collate")],
            transform="LoadAnnotations (polygons to bitmasks), Resize and RandomFlip on the host array, "
            "PackDetInputs",
        )

    def predictor(self, cfg, data, dist: DistInfo, model=None, native=None):
        """What mmdet's inference API (``mmdet.apis.inference_detector``) does, for a batch: the config's
        test pipeline with ``LoadImageFromNDArray`` first (resize to the test scale, pack), then
        ``model.test_step`` on the batch (data_preprocessor: to the device, BGR to RGB, normalise, pad;
        predict with rescale: boxes and masks at the image's size, masks at mask_thr_binary)."""
        native = self.translated(cfg, data, native)
        pillow_linear_alias()
        import torch
        from mmcv.transforms import Compose
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mrcnn_bench.harness.config import settings

        register_all_modules()
        if model is None:
            model = MODELS.build(native.model)
            if cfg.model.init_weights:
                load_exact(
                    model,
                    from_torchvision(load_initial_weights(cfg.model.init_weights)),
                    cfg.model.init_weights,
                )
            model.to(dist.device)
        model.eval()
        if settings.applies(
            cfg, "mmdet", "fuse_conv_bn"
        ):  # --best at inference: as mmdet's benchmark tool offers
            from mmcv.cnn import fuse_conv_bn

            model = fuse_conv_bn(model)
        if cfg.benchmark.channels_last:
            model.to(memory_format=torch.channels_last)
        steps = [dict(step) for step in native.test_pipeline]
        steps[0] = dict(type="mmdet.LoadImageFromNDArray")  # as inference_detector does for arrays
        pipeline = Compose(steps)

        def predict(images):
            # decoded RGB -> the BGR array mmdet's loaders give (its data_preprocessor turns it back)
            packed = [
                pipeline(dict(img=image.permute(1, 2, 0).flip(-1).numpy(), img_id=i))
                for i, image in enumerate(images)
            ]
            results = model.test_step(
                dict(inputs=[p["inputs"] for p in packed], data_samples=[p["data_samples"] for p in packed])
            )
            return [
                detections(
                    r.pred_instances.bboxes,
                    r.pred_instances.scores,
                    r.pred_instances.labels + 1,
                    r.pred_instances.masks,
                )
                for r in results
            ]

        return predict


def _check_supported(bench, training: bool) -> None:
    """What this adapter cannot run, before mmengine is asked to."""
    if training and bench.dtype != "fp32" and bench.device != "cuda":  # inference: the harness's autocast
        raise UnsupportedConfig(
            f"mmengine's AmpOptimWrapper needs a GPU (benchmark.dtype {bench.dtype} on {bench.device})"
        )
    if bench.device == "cpu":
        import torch

        if torch.cuda.is_available():
            raise UnsupportedConfig(
                "mmengine puts the model on the GPU whenever one is visible: for a CPU run set "
                "CUDA_VISIBLE_DEVICES="
            )


def _set_model(model, cfg, classes) -> None:
    """Backbone, FPN, RPN (anchors, matching, sampling, proposals), the training and test settings, then
    the RoI head (``_set_roi_head``)."""
    model_cfg, rpn, roi = cfg.model, cfg.model.rpn, cfg.model.roi_heads
    model.data_preprocessor.mean = list(model_cfg.pixel_mean)
    model.data_preprocessor.std = list(model_cfg.pixel_std)
    model.data_preprocessor.bgr_to_rgb = True  # images load as BGR; the statistics are RGB

    backbone = model.backbone
    backbone.depth = model_cfg.backbone.depth
    backbone.frozen_stages = model_cfg.effective_freeze_at - 1  # mmdet: -1 none, 0 stem, 1 stem + res2, ...
    backbone.norm_cfg, backbone.norm_eval = _norm(model_cfg.effective_norm)
    # never downloads; the shared initialisation (loaded before training) already holds model.weights
    backbone.init_cfg = (
        dict(type="Pretrained", checkpoint=str(model_cfg.weights))
        if model_cfg.weights and not model_cfg.init_weights
        else None
    )

    model.neck.out_channels = model_cfg.fpn_out_channels
    head = model.rpn_head
    head.in_channels = head.feat_channels = model_cfg.fpn_out_channels
    head.loss_bbox = _box_loss(rpn.smooth_l1_beta, head.loss_bbox)
    gen = head.anchor_generator
    if len(model_cfg.anchors.sizes) != len(gen.strides):
        raise UnsupportedConfig(f"model.anchors.sizes needs one size per FPN level {list(gen.strides)}")
    scales = {size / stride for size, stride in zip(model_cfg.anchors.sizes, gen.strides)}
    if len(scales) == 1:
        gen.scales = [scales.pop()]
    else:
        gen.base_sizes, gen.scales = list(model_cfg.anchors.sizes), [1.0]
    gen.ratios = list(model_cfg.anchors.aspect_ratios)

    train_cfg, test_cfg = model.train_cfg, model.test_cfg
    _set_sampling(train_cfg.rpn, rpn)
    train_cfg.rpn.assigner.match_low_quality = rpn.low_quality_matches
    train_cfg.rpn.assigner.min_pos_iou = rpn.low_quality_min_iou
    train_cfg.rpn_proposal.min_bbox_size = test_cfg.rpn.min_bbox_size = (
        rpn.min_proposal_size
    )  # sides > it kept
    train_cfg.rpn_proposal.nms_pre = rpn.pre_nms_topk_train  # per level, like detectron2's
    train_cfg.rpn_proposal.max_per_img = rpn.post_nms_topk_train
    train_cfg.rpn_proposal.nms.iou_threshold = rpn.nms_thresh
    test_cfg.rpn.nms_pre = rpn.pre_nms_topk_test
    test_cfg.rpn.max_per_img = rpn.post_nms_topk_test
    test_cfg.rpn.nms.iou_threshold = rpn.nms_thresh
    _set_sampling(train_cfg.rcnn, roi)
    train_cfg.rcnn.assigner.min_pos_iou = roi.fg_iou_thresh
    train_cfg.rcnn.mask_size = 2 * roi.mask_pooler_resolution
    test_cfg.rcnn.score_thr = roi.score_thresh_test
    test_cfg.rcnn.nms.iou_threshold = roi.nms_thresh_test
    test_cfg.rcnn.max_per_img = roi.detections_per_image
    _set_roi_head(model.roi_head, cfg, classes)


def _set_sampling(part, section) -> None:
    """A train_cfg part's assigner and sampler (rpn or rcnn) from the canonical model.rpn or
    model.roi_heads."""
    part.assigner.pos_iou_thr, part.assigner.neg_iou_thr = section.fg_iou_thresh, section.bg_iou_thresh
    part.sampler.num, part.sampler.pos_fraction = section.batch_size_per_image, section.positive_fraction


def _set_roi_head(roi_head, cfg, classes) -> None:
    """The RoI extractors (RoIAlign), the box head and the mask head."""
    model_cfg, roi = cfg.model, cfg.model.roi_heads
    for extractor, size in (
        (roi_head.bbox_roi_extractor, roi.box_pooler_resolution),
        (roi_head.mask_roi_extractor, roi.mask_pooler_resolution),
    ):
        extractor.out_channels = model_cfg.fpn_out_channels
        extractor.roi_layer.output_size = size
        extractor.roi_layer.sampling_ratio = roi.pooler_sampling_ratio
        extractor.roi_layer.aligned = roi.pooler_aligned
    box = roi_head.bbox_head
    if roi.box_head_num_fc != 2:  # Shared2FCBBoxHead is ConvFCBBoxHead with two shared fcs
        box.type, box.num_shared_convs, box.num_shared_fcs = "ConvFCBBoxHead", 0, roi.box_head_num_fc
    box.in_channels = model_cfg.fpn_out_channels
    box.roi_feat_size = roi.box_pooler_resolution
    box.fc_out_channels = roi.box_head_fc_dim
    box.num_classes = len(classes)
    box.loss_bbox = _box_loss(roi.smooth_l1_beta, box.loss_bbox)
    mask = roi_head.mask_head
    mask.in_channels = model_cfg.fpn_out_channels
    mask.num_convs = roi.mask_head_num_conv
    mask.conv_out_channels = roi.mask_head_conv_dim
    mask.num_classes = len(classes)


def _set_data(mmcfg, cfg, data, classes) -> None:
    """The training pipeline and loader, in the run's data order; no validation or test."""
    inp, bench = cfg.input, cfg.benchmark
    if len(inp.min_size_train) == 1:
        resize = dict(type="Resize", scale=(inp.max_size_train, inp.min_size_train[0]), keep_ratio=True)
    else:
        resize = dict(
            type="RandomChoiceResize",
            scales=[(inp.max_size_train, s) for s in inp.min_size_train],
            keep_ratio=True,
        )
    pipeline = [
        dict(type="LoadImageFromFile", backend_args=None),
        # polygons kept as polygons (PolygonMasks): mask_target rasterises them inside each RoI
        dict(
            type="LoadAnnotations",
            with_bbox=True,
            with_mask=True,
            poly2mask=cfg.model.roi_heads.mask_target != "polygon",
        ),
        resize,
        dict(type="RandomFlip", prob=inp.horizontal_flip_prob),
        dict(type="PackDetInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile", backend_args=None),
        dict(type="Resize", scale=(inp.max_size_test, inp.min_size_test), keep_ratio=True),
        dict(
            type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")
        ),
    ]
    loader = mmcfg.train_dataloader
    loader.batch_size = cfg.ims_per_process_step
    loader.num_workers = bench.num_workers
    loader.persistent_workers = bench.num_workers > 0
    # the run's one data order, endless (mmdet's epoch-based DefaultSampler would restart the loader
    # and its workers after every pass, inside the timed window), grouped by aspect ratio there: the
    # stock AspectRatioBatchSampler would regroup it
    loader.sampler = dict(
        type=ORDER_SAMPLER,
        order=data_spec(cfg, data)["order"],
        train_json=str(data.train_json) if data else "",
    )
    loader.batch_sampler = None
    ds = loader.dataset
    ds.data_root = ""
    ds.ann_file = str(data.train_json) if data else ""
    ds.data_prefix = dict(img=(str(data.train_images) + os.sep) if data else "")
    ds.metainfo = dict(classes=classes)
    ds.filter_cfg = dict(filter_empty_gt=inp.filter_empty_annotations, min_size=32)
    ds.pipeline = pipeline
    mmcfg.train_pipeline, mmcfg.test_pipeline = pipeline, test_pipeline  # the stock file's top-level copies
    for key in (
        "val_dataloader",
        "val_evaluator",
        "val_cfg",
        "test_dataloader",
        "test_evaluator",
        "test_cfg",
    ):
        mmcfg[key] = None


def _set_schedule(mmcfg, cfg) -> None:
    """SGD with its weight decays, the warm-up and steps in mmengine's iterations (x accumulation)."""
    sol, bench = cfg.solver, cfg.benchmark
    accum = bench.grad_accum
    mmcfg.optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="SGD", lr=sol.base_lr, momentum=sol.momentum, weight_decay=sol.weight_decay),
        paramwise_cfg=dict(
            norm_decay_mult=sol.weight_decay_norm / sol.weight_decay if sol.weight_decay else 0.0
        ),
        accumulative_counts=accum,
    )
    # mmengine's LinearLR reaches factor 1 at iteration end - begin - 1
    mmcfg.param_scheduler = [
        dict(
            type="LinearLR",
            start_factor=sol.warmup_factor,
            by_epoch=False,
            begin=0,
            end=sol.warmup_iters * accum + 1,
        ),
        dict(
            type="MultiStepLR",
            by_epoch=False,
            begin=0,
            end=sol.max_iter * accum,
            milestones=[s * accum for s in sol.steps],
            gamma=sol.gamma,
        ),
    ]
    mmcfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=bench.iters * accum, val_interval=10**9)


def _set_runtime(mmcfg, cfg) -> None:
    """Hooks, logging, distribution, precision, seed, and what the harness reads back."""
    model_cfg, bench = cfg.model, cfg.benchmark
    accum = bench.grad_accum
    mmcfg.default_hooks.checkpoint = None  # no 170 MB checkpoint at the end of a benchmark
    mmcfg.default_hooks.logger = dict(type="LoggerHook", interval=50, log_metric_by_epoch=False)
    mmcfg.log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)
    mmcfg.env_cfg = dict(
        cudnn_benchmark=False,
        mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
        dist_cfg=dict(backend="nccl" if bench.device == "cuda" else "gloo"),
    )
    if (
        bench.device == "cpu"
    ):  # mmengine's default wrapper passes device_ids=[LOCAL_RANK], which DDP refuses on CPU
        mmcfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False
        )
    if bench.dtype != "fp32":
        mmcfg.optim_wrapper.type = "AmpOptimWrapper"
        mmcfg.optim_wrapper.dtype = {"fp16": "float16", "bf16": "bfloat16"}[bench.dtype]
    mmcfg.log_level = "WARNING"  # the harness prints progress; mmengine's INFO lists every parameter group
    mmcfg.randomness = dict(seed=bench.seed)
    mmcfg.load_from = None
    mmcfg.resume = False
    mmcfg.work_dir = os.path.join(tempfile.gettempdir(), "mrcnn-bench-mmdet")
    mmcfg.mrcnn_bench = dict(
        world_size=bench.gpus,
        channels_last=bench.channels_last,
        grad_accum=accum,
        device=bench.device,
        init_weights=model_cfg.init_weights,
    )


# ------------------------------------------------------------- effective hparams, by section
def _backbone_hparams(model) -> dict:
    """The ResNet, its norm, the FPN and the anchors."""
    backbone, generator = model.backbone, model.rpn_head.anchor_generator
    bases = generator.get("base_sizes") or generator.strides
    norm = backbone.norm_cfg.type
    if norm == "BN" and backbone.norm_eval:
        norm = (
            "FrozenBN"
            if not backbone.norm_cfg.get("requires_grad", True)
            else "BN (frozen statistics, trained affine)"
        )
    return {
        "model.num_classes": model.roi_head.bbox_head.num_classes,
        "model.pixel_mean": list(model.data_preprocessor.mean),
        "model.pixel_std": list(model.data_preprocessor.std),
        "model.backbone.depth": backbone.depth,
        "model.backbone.freeze_at": backbone.frozen_stages + 1,
        "model.backbone.norm": norm,
        "model.fpn_out_channels": model.neck.out_channels,
        "model.anchors.sizes": [base * generator.scales[0] for base in bases],
        "model.anchors.aspect_ratios": list(generator.ratios),
        "model.anchors.round_to_pixels": False,  # AnchorGenerator.gen_single_level_base_anchors: no rounding
        "info.backbone_style": PYTORCH_STYLE if backbone.style == "pytorch" else CAFFE_STYLE,
    }


def _rpn_hparams(rpn_head, train_cfg, test_cfg) -> dict:
    assigner = train_cfg.rpn.assigner
    return {
        **sampling_hparams(
            "rpn",
            assigner.pos_iou_thr,
            assigner.neg_iou_thr,
            train_cfg.rpn.sampler.num,
            train_cfg.rpn.sampler.pos_fraction,
        ),
        # post_nms_topk per image: max_per_img
        **proposal_hparams(
            train_cfg.rpn_proposal.nms.iou_threshold,
            train_cfg.rpn_proposal.nms_pre,
            train_cfg.rpn_proposal.max_per_img,
            test_cfg.rpn.nms_pre,
            test_cfg.rpn.max_per_img,
        ),
        "model.rpn.smooth_l1_beta": _beta_of(rpn_head.loss_bbox),
        "model.rpn.low_quality_matches": assigner.match_low_quality,
        "model.rpn.low_quality_min_iou": assigner.min_pos_iou,
        "model.rpn.min_proposal_size": train_cfg.rpn_proposal.get("min_bbox_size", 0),
    }


def _roi_hparams(roi_head, train_cfg, test_cfg, pipeline) -> dict:
    box, roi_layer = roi_head.bbox_head, roi_head.bbox_roi_extractor.roi_layer
    loads = next(t for t in pipeline if t["type"] == "LoadAnnotations")
    return {
        **sampling_hparams(
            "roi_heads",
            train_cfg.rcnn.assigner.pos_iou_thr,
            train_cfg.rcnn.assigner.neg_iou_thr,
            train_cfg.rcnn.sampler.num,
            train_cfg.rcnn.sampler.pos_fraction,
        ),
        "model.roi_heads.box_pooler_resolution": roi_layer.output_size,
        "model.roi_heads.mask_pooler_resolution": roi_head.mask_roi_extractor.roi_layer.output_size,
        "model.roi_heads.pooler_sampling_ratio": roi_layer.sampling_ratio,
        "model.roi_heads.pooler_aligned": roi_layer.get("aligned", True),  # mmcv's default
        "model.roi_heads.box_head_num_fc": 2 if box.type == "Shared2FCBBoxHead" else box.num_shared_fcs,
        "model.roi_heads.box_head_fc_dim": box.fc_out_channels,
        "model.roi_heads.mask_head_num_conv": roi_head.mask_head.num_convs,
        "model.roi_heads.mask_head_conv_dim": roi_head.mask_head.conv_out_channels,
        "model.roi_heads.score_thresh_test": test_cfg.rcnn.score_thr,
        "model.roi_heads.nms_thresh_test": test_cfg.rcnn.nms.iou_threshold,
        "model.roi_heads.detections_per_image": test_cfg.rcnn.max_per_img,
        "model.roi_heads.smooth_l1_beta": _beta_of(box.loss_bbox),
        # mask_target crops PolygonMasks by rasterising, BitmapMasks with aligned RoIAlign, binarised
        # (binarize=True)
        "model.roi_heads.mask_target": "bitmask_binarized" if loads.get("poly2mask", True) else "polygon",
        "info.roi_low_quality_matches": train_cfg.rcnn.assigner.match_low_quality,
        "info.resize_interpolation": "bilinear on uint8 pixels (cv2, mmcv.imresize)",
        "info.roi_gt_as_proposals": train_cfg.rcnn.sampler.add_gt_as_proposals,
    }


def _input_hparams(mmcfg) -> dict:
    """The training and test pipelines' resize and flip, the dataset's filter, the sampler's grouping."""
    loader = mmcfg.train_dataloader
    resize = next(t for t in loader.dataset.pipeline if t["type"] in ("Resize", "RandomChoiceResize"))
    scales = [resize["scale"]] if resize["type"] == "Resize" else resize["scales"]
    test_resize = next(t for t in mmcfg.test_pipeline if t["type"] == "Resize")
    flip = next(t for t in loader.dataset.pipeline if t["type"] == "RandomFlip")
    return {
        "input.min_size_train": [min(scale) for scale in scales],
        "input.max_size_train": max(scales[0]),
        "input.min_size_test": min(test_resize["scale"]),
        "input.max_size_test": max(test_resize["scale"]),
        "input.horizontal_flip_prob": flip["prob"],
        "input.resize_rounding": "round",  # mmcv.rescale_size: int(side * scale + 0.5)
        "input.filter_empty_annotations": loader.dataset.filter_cfg.filter_empty_gt,
        "input.aspect_ratio_grouping": (
            loader.sampler.type == ORDER_SAMPLER
            and loader.batch_sampler is None
            and loader.sampler.order["group_by_aspect"]
        ),
    }


ADAPTERS = [MMDetAdapter()]
