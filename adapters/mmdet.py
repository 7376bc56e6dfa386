"""mmdetection 3.x's Mask R-CNN R-50-FPN, trained by mmengine's Runner with an IterBasedTrainLoop.

The canonical config is written into mmdet's own ``mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` (loaded
from the installed package, so the model is the one mmdet ships: its pytorch-style ResNet, mmcv's
RoIAlign and NMS, L1 box losses, its assigners and samplers); only the values the canonical config
names are changed, and ``effective_hparams`` reads them back out of the built mmengine Config.
The harness timer is an mmengine hook that runs after mmengine's own IterTimerHook and the
ParamSchedulerHook, i.e. after the optimizer step and the LR update of each iteration.

mmdet's stock configs differ from the other implementations in ways the parity table lists as
``info.*`` rows: RPN anchors may match a ground-truth box with IoU as low as 0.3 (``min_pos_iou``),
the RoI assigner also matches low-quality boxes, samplers add ground-truth boxes as proposals, images
are grouped by aspect ratio. mmdet also ships caffe-style R-50 configs (``mask-rcnn_r50-caffe_fpn``:
stride in the 1x1 conv, BGR input without std, caffe weights); the 1x config used here is pytorch-style
like the other implementations, and the table's ``info.backbone_style`` row says so.

Install: ``make mmdet`` (scripts/install_mmdet.py: mmcv 2.1.0 built from its sdist, cached as a wheel).
With gradient accumulation, mmengine steps the LR schedule once per micro-batch; the schedule's
iteration counts are multiplied by ``benchmark.grad_accum`` so warm-up and steps land on the same
optimizer steps as elsewhere.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

from .base import Adapter, DistInfo, UnsupportedConfig
from .common import CAFFE_STYLE, PYTORCH_STYLE, num_classes, pillow_linear_alias

# in the installed package (mmdet/.mim/configs); read by path: mmengine's "mmdet::" lookup needs pkg_resources
STOCK_CONFIG = "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"
# after ParamSchedulerHook (LOW = 70), before CheckpointHook (VERY_LOW = 90)
HOOK_PRIORITY = 75


def _class_names(cfg, data) -> tuple[str, ...]:
    """mmdet's CocoDataset selects categories by name: the training set's, in its order."""
    n = num_classes(cfg, data)
    if data is None:
        return tuple(f"class_{i}" for i in range(n))
    categories = json.loads(data.train_json.read_text())["categories"]
    names = tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))
    if len(names) != n:
        raise UnsupportedConfig(f"model.num_classes is {n} but {data.train_json} has {len(names)} categories; mmdet trains on the file's categories")
    return names


def _norm(norm: str) -> tuple[dict, bool]:
    """(norm_cfg, norm_eval) for a canonical norm."""
    if norm == "FrozenBN":  # statistics and affine parameters fixed
        return dict(type="BN", requires_grad=False), True
    if norm == "BN":
        return dict(type="BN", requires_grad=True), False
    if norm == "SyncBN":
        return dict(type="SyncBN", requires_grad=True), False
    raise UnsupportedConfig(f"model.backbone.norm {norm!r} has no mmdet equivalent")


class MMDetAdapter(Adapter):
    name = "mmdet"
    install_hint = "make mmdet (mmengine 0.10.7, mmdet 3.3.0 and mmcv 2.1.0 built from its sdist; see scripts/install_mmdet.py)"

    def available(self):
        try:
            import mmcv
            import mmcv.ops  # noqa: F401 - the compiled ops Mask R-CNN needs (mmcv._ext)
            import mmdet
            import mmengine
        except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable, with the reason
            return False, f"{type(e).__name__}: {e}"
        return True, f"{mmdet.__version__} (mmcv {mmcv.__version__}, mmengine {mmengine.__version__})"

    # ----------------------------------------------------------------- translate
    def translate(self, cfg, data=None):
        from pathlib import Path

        import mmdet
        from mmengine.config import Config

        m, rpn, roi, inp, sol, bench = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver, cfg.benchmark
        if bench.dtype != "fp32" and bench.device != "cuda":
            raise UnsupportedConfig(f"mmengine's AmpOptimWrapper needs a GPU (benchmark.dtype {bench.dtype} on {bench.device})")
        if bench.device == "cpu":
            import torch

            if torch.cuda.is_available():
                raise UnsupportedConfig("mmengine puts the model on the GPU whenever one is visible: for a CPU run set CUDA_VISIBLE_DEVICES=")
        accum = bench.grad_accum
        stock = Path(mmdet.__file__).parent / ".mim" / "configs" / STOCK_CONFIG
        if not stock.is_file():
            raise FileNotFoundError(f"{stock}: mmdet's stock config is missing; reinstall with: make mmdet")
        c = Config.fromfile(stock)
        model = c.model
        model.data_preprocessor.mean = list(m.pixel_mean)
        model.data_preprocessor.std = list(m.pixel_std)
        model.data_preprocessor.bgr_to_rgb = True  # images load as BGR; the statistics are RGB

        bb = model.backbone
        bb.depth = m.backbone.depth
        bb.frozen_stages = m.effective_freeze_at - 1  # mmdet: -1 none, 0 stem, 1 stem + res2, ...
        bb.norm_cfg, bb.norm_eval = _norm(m.effective_norm)
        bb.init_cfg = dict(type="Pretrained", checkpoint=str(m.weights)) if m.weights else None  # never downloads

        model.neck.out_channels = m.fpn_out_channels
        head = model.rpn_head
        head.in_channels = head.feat_channels = m.fpn_out_channels
        gen = head.anchor_generator
        if len(m.anchors.sizes) != len(gen.strides):
            raise UnsupportedConfig(f"model.anchors.sizes needs one size per FPN level {list(gen.strides)}")
        scales = {size / stride for size, stride in zip(m.anchors.sizes, gen.strides)}
        if len(scales) == 1:
            gen.scales = [scales.pop()]
        else:
            gen.base_sizes, gen.scales = list(m.anchors.sizes), [1.0]
        gen.ratios = list(m.anchors.aspect_ratios)

        tr, te = model.train_cfg, model.test_cfg
        tr.rpn.assigner.pos_iou_thr = rpn.fg_iou_thresh
        tr.rpn.assigner.neg_iou_thr = rpn.bg_iou_thresh
        tr.rpn.sampler.num = rpn.batch_size_per_image
        tr.rpn.sampler.pos_fraction = rpn.positive_fraction
        tr.rpn_proposal.nms_pre = rpn.pre_nms_topk_train  # per level, like detectron2's
        tr.rpn_proposal.max_per_img = rpn.post_nms_topk_train
        tr.rpn_proposal.nms.iou_threshold = rpn.nms_thresh
        te.rpn.nms_pre = rpn.pre_nms_topk_test
        te.rpn.max_per_img = rpn.post_nms_topk_test
        te.rpn.nms.iou_threshold = rpn.nms_thresh
        tr.rcnn.assigner.pos_iou_thr = roi.fg_iou_thresh
        tr.rcnn.assigner.neg_iou_thr = roi.bg_iou_thresh
        tr.rcnn.assigner.min_pos_iou = roi.fg_iou_thresh
        tr.rcnn.sampler.num = roi.batch_size_per_image
        tr.rcnn.sampler.pos_fraction = roi.positive_fraction
        tr.rcnn.mask_size = 2 * roi.mask_pooler_resolution
        te.rcnn.score_thr = roi.score_thresh_test
        te.rcnn.nms.iou_threshold = roi.nms_thresh_test
        te.rcnn.max_per_img = roi.detections_per_image

        classes = _class_names(cfg, data)
        rh = model.roi_head
        for extractor, size in ((rh.bbox_roi_extractor, roi.box_pooler_resolution), (rh.mask_roi_extractor, roi.mask_pooler_resolution)):
            extractor.out_channels = m.fpn_out_channels
            extractor.roi_layer.output_size = size
            extractor.roi_layer.sampling_ratio = roi.pooler_sampling_ratio
            extractor.roi_layer.aligned = roi.pooler_aligned
        box = rh.bbox_head
        if roi.box_head_num_fc != 2:  # Shared2FCBBoxHead is ConvFCBBoxHead with two shared fcs
            box.type, box.num_shared_convs, box.num_shared_fcs = "ConvFCBBoxHead", 0, roi.box_head_num_fc
        box.in_channels = m.fpn_out_channels
        box.roi_feat_size = roi.box_pooler_resolution
        box.fc_out_channels = roi.box_head_fc_dim
        box.num_classes = len(classes)
        mask = rh.mask_head
        mask.in_channels = m.fpn_out_channels
        mask.num_convs = roi.mask_head_num_conv
        mask.conv_out_channels = roi.mask_head_conv_dim
        mask.num_classes = len(classes)

        if len(inp.min_size_train) == 1:
            resize = dict(type="Resize", scale=(inp.max_size_train, inp.min_size_train[0]), keep_ratio=True)
        else:
            resize = dict(type="RandomChoiceResize", scales=[(inp.max_size_train, s) for s in inp.min_size_train], keep_ratio=True)
        pipeline = [
            dict(type="LoadImageFromFile", backend_args=None),
            dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
            resize,
            dict(type="RandomFlip", prob=inp.horizontal_flip_prob),
            dict(type="PackDetInputs"),
        ]
        test_pipeline = [
            dict(type="LoadImageFromFile", backend_args=None),
            dict(type="Resize", scale=(inp.max_size_test, inp.min_size_test), keep_ratio=True),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
        ]
        loader = c.train_dataloader
        loader.batch_size = cfg.ims_per_gpu
        loader.num_workers = bench.num_workers
        loader.persistent_workers = bench.num_workers > 0
        # what mmdet's iteration-based configs use: the epoch-based DefaultSampler restarts the loader
        # (and its workers) after every pass over the data, inside the timed window
        loader.sampler = dict(type="InfiniteSampler", shuffle=True)
        ds = loader.dataset
        ds.data_root = ""
        ds.ann_file = str(data.train_json) if data else ""
        ds.data_prefix = dict(img=(str(data.train_images) + os.sep) if data else "")
        ds.metainfo = dict(classes=classes)
        ds.filter_cfg = dict(filter_empty_gt=inp.filter_empty_annotations, min_size=32)
        ds.pipeline = pipeline
        c.train_pipeline, c.test_pipeline = pipeline, test_pipeline  # the stock file's top-level copies
        for key in ("val_dataloader", "val_evaluator", "val_cfg", "test_dataloader", "test_evaluator", "test_cfg"):
            c[key] = None

        c.optim_wrapper = dict(
            type="OptimWrapper",
            optimizer=dict(type="SGD", lr=sol.base_lr, momentum=sol.momentum, weight_decay=sol.weight_decay),
            paramwise_cfg=dict(norm_decay_mult=sol.weight_decay_norm / sol.weight_decay if sol.weight_decay else 0.0),
            accumulative_counts=accum,
        )
        # mmengine's LinearLR reaches factor 1 at iteration end - begin - 1
        c.param_scheduler = [
            dict(type="LinearLR", start_factor=sol.warmup_factor, by_epoch=False, begin=0, end=sol.warmup_iters * accum + 1),
            dict(type="MultiStepLR", by_epoch=False, begin=0, end=sol.max_iter * accum, milestones=[s * accum for s in sol.steps], gamma=sol.gamma),
        ]
        c.train_cfg = dict(type="IterBasedTrainLoop", max_iters=bench.iters * accum, val_interval=10**9)
        c.default_hooks.checkpoint = None  # no 170 MB checkpoint at the end of a benchmark
        c.default_hooks.logger = dict(type="LoggerHook", interval=50, log_metric_by_epoch=False)
        c.log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)
        c.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                         dist_cfg=dict(backend="nccl" if bench.device == "cuda" else "gloo"))
        if bench.device == "cpu":  # mmengine's default wrapper passes device_ids=[LOCAL_RANK], which DDP refuses on CPU
            c.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
        if bench.dtype != "fp32":
            c.optim_wrapper.type = "AmpOptimWrapper"
            c.optim_wrapper.dtype = {"fp16": "float16", "bf16": "bfloat16"}[bench.dtype]
        c.log_level = "WARNING"  # the harness prints progress; mmengine's INFO lists every parameter group
        c.randomness = dict(seed=bench.seed)
        c.load_from = None
        c.resume = False
        c.work_dir = os.path.join(tempfile.gettempdir(), "mrcnn-bench-mmdet")
        c.mrcnn_bench = dict(world_size=bench.gpus, channels_last=bench.channels_last, grad_accum=accum, device=bench.device)
        return c

    # ------------------------------------------------------- effective hparams
    def effective_hparams(self, native) -> dict:
        c = native
        model, tr, te = c.model, c.model.train_cfg, c.model.test_cfg
        bb, gen, rh = model.backbone, model.rpn_head.anchor_generator, model.roi_head
        accum = c.mrcnn_bench.grad_accum
        bases = gen.get("base_sizes") or gen.strides
        norm = bb.norm_cfg.type
        if norm == "BN" and bb.norm_eval:
            norm = "FrozenBN" if not bb.norm_cfg.get("requires_grad", True) else "BN (frozen statistics, trained affine)"
        resize = next(t for t in c.train_dataloader.dataset.pipeline if t["type"] in ("Resize", "RandomChoiceResize"))
        scales = [resize["scale"]] if resize["type"] == "Resize" else resize["scales"]
        test_resize = next(t for t in c.test_pipeline if t["type"] == "Resize")
        flip = next(t for t in c.train_dataloader.dataset.pipeline if t["type"] == "RandomFlip")
        box = rh.bbox_head
        linear, steps = c.param_scheduler
        sgd = c.optim_wrapper.optimizer
        return {
            "model.num_classes": box.num_classes,
            "model.pixel_mean": list(model.data_preprocessor.mean),
            "model.pixel_std": list(model.data_preprocessor.std),
            "model.backbone.depth": bb.depth,
            "model.backbone.freeze_at": bb.frozen_stages + 1,
            "model.backbone.norm": norm,
            "model.fpn_out_channels": model.neck.out_channels,
            "model.anchors.sizes": [b * gen.scales[0] for b in bases],
            "model.anchors.aspect_ratios": list(gen.ratios),
            "model.rpn.fg_iou_thresh": tr.rpn.assigner.pos_iou_thr,
            "model.rpn.bg_iou_thresh": tr.rpn.assigner.neg_iou_thr,
            "model.rpn.batch_size_per_image": tr.rpn.sampler.num,
            "model.rpn.positive_fraction": tr.rpn.sampler.pos_fraction,
            "model.rpn.nms_thresh": tr.rpn_proposal.nms.iou_threshold,
            "model.rpn.pre_nms_topk_train": tr.rpn_proposal.nms_pre,
            "model.rpn.post_nms_topk_train": tr.rpn_proposal.max_per_img,
            "model.rpn.pre_nms_topk_test": te.rpn.nms_pre,
            "model.rpn.post_nms_topk_test": te.rpn.max_per_img,
            "model.rpn.post_nms_topk_scope": "per image",  # max_per_img
            "model.roi_heads.fg_iou_thresh": tr.rcnn.assigner.pos_iou_thr,
            "model.roi_heads.bg_iou_thresh": tr.rcnn.assigner.neg_iou_thr,
            "model.roi_heads.batch_size_per_image": tr.rcnn.sampler.num,
            "model.roi_heads.positive_fraction": tr.rcnn.sampler.pos_fraction,
            "model.roi_heads.box_pooler_resolution": rh.bbox_roi_extractor.roi_layer.output_size,
            "model.roi_heads.mask_pooler_resolution": rh.mask_roi_extractor.roi_layer.output_size,
            "model.roi_heads.pooler_sampling_ratio": rh.bbox_roi_extractor.roi_layer.sampling_ratio,
            "model.roi_heads.pooler_aligned": rh.bbox_roi_extractor.roi_layer.get("aligned", True),  # mmcv's default
            "model.roi_heads.box_head_num_fc": 2 if box.type == "Shared2FCBBoxHead" else box.num_shared_fcs,
            "model.roi_heads.box_head_fc_dim": box.fc_out_channels,
            "model.roi_heads.mask_head_num_conv": rh.mask_head.num_convs,
            "model.roi_heads.mask_head_conv_dim": rh.mask_head.conv_out_channels,
            "model.roi_heads.score_thresh_test": te.rcnn.score_thr,
            "model.roi_heads.nms_thresh_test": te.rcnn.nms.iou_threshold,
            "model.roi_heads.detections_per_image": te.rcnn.max_per_img,
            "input.min_size_train": [min(s) for s in scales],
            "input.max_size_train": max(scales[0]),
            "input.min_size_test": min(test_resize["scale"]),
            "input.max_size_test": max(test_resize["scale"]),
            "input.horizontal_flip_prob": flip["prob"],
            "input.filter_empty_annotations": c.train_dataloader.dataset.filter_cfg.filter_empty_gt,
            "solver.ims_per_batch_per_process": c.train_dataloader.batch_size,
            "solver.base_lr": sgd.lr,
            "solver.momentum": sgd.momentum,
            "solver.weight_decay": sgd.weight_decay,
            "solver.weight_decay_norm": sgd.weight_decay * c.optim_wrapper.get("paramwise_cfg", {}).get("norm_decay_mult", 1.0),
            "solver.warmup_method": {"LinearLR": "linear"}.get(linear["type"], linear["type"]),
            "solver.warmup_iters": (linear["end"] - linear["begin"] - 1) // accum,
            "solver.warmup_factor": linear["start_factor"],
            "solver.steps": [s // accum for s in steps["milestones"]],
            "solver.gamma": steps["gamma"],
            # not canonical keys, shown so the table says how each framework differs
            "info.backbone_style": PYTORCH_STYLE if bb.style == "pytorch" else CAFFE_STYLE,
            "info.rpn_smooth_l1_beta": 0.0 if model.rpn_head.loss_bbox.type == "L1Loss" else model.rpn_head.loss_bbox.get("beta"),
            "info.box_smooth_l1_beta": 0.0 if box.loss_bbox.type == "L1Loss" else box.loss_bbox.get("beta"),
            "info.mask_targets": "bitmaps cropped with RoIAlign per RoI",
            "info.aspect_ratio_grouping": c.train_dataloader.batch_sampler.type == "AspectRatioBatchSampler",
            "info.rpn_low_quality_matches": (f"best anchor per box if IoU >= {tr.rpn.assigner.min_pos_iou}"
                                             if tr.rpn.assigner.match_low_quality else False),
            "info.roi_low_quality_matches": tr.rcnn.assigner.match_low_quality,
            "info.roi_gt_as_proposals": tr.rcnn.sampler.add_gt_as_proposals,
            "_notes": {
                "model.backbone.norm": "mmdet's stock R-50 trains the BN affine parameters while keeping the statistics (norm_eval)",
            },
        }

    # ----------------------------------------------------------------- train
    def train(self, cfg, data, timer, dist: DistInfo) -> dict:
        native = self.translate(cfg, data)
        shims = ["PIL.Image.LINEAR = BILINEAR (for detectron2, which mmdet imports when installed)"] if pillow_linear_alias() else []
        import torch
        from mmengine.hooks import Hook
        from mmengine.runner import Runner

        accum = native.mrcnn_bench.grad_accum
        images_per_step = native.train_dataloader.batch_size * accum
        native.launcher = "pytorch" if dist.distributed else "none"

        class HarnessTimer(Hook):
            """Stamps each optimizer step for the harness, after the LR scheduler's update."""

            def before_train(self, runner):
                timer.before_train()

            def before_train_iter(self, runner, batch_idx, data_batch=None):
                if runner.iter % accum == 0:  # the lr of this optimizer step, before the scheduler moves it
                    self.lr = runner.optim_wrapper.get_lr()["lr"][0]
                    self.data_time = 0.0

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                hub = runner.message_hub
                if "train/data_time" in hub.log_scalars:  # IterTimerHook's, for this micro-batch
                    self.data_time += hub.get_scalar("train/data_time").current()
                if (runner.iter + 1) % accum:  # stamped when the optimizer stepped
                    return
                loss = float(outputs["loss"].detach()) if outputs and "loss" in outputs else None
                if loss is not None and not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at iteration {timer.next_iter}: "
                                             + ", ".join(f"{k}={float(v):.4g}" for k, v in outputs.items()))
                timer.after_step(images_per_step, loss=loss, data_time=self.data_time, lr=self.lr)

        runner = Runner.from_cfg(native)
        runner.register_hook(HarnessTimer(), priority=HOOK_PRIORITY)
        if native.mrcnn_bench.channels_last:
            runner.model.to(memory_format=torch.channels_last)
        runner.train()
        extra = {"native_config": native.pretty_text, "shims": shims}
        if dist.is_main:  # after the timed window: does not touch the measurement
            from mrcnn_bench.harness.flops import flops_per_image

            def step(model, batch):
                data = model.data_preprocessor(batch, True)
                loss, _ = model.parse_losses(model(**data, mode="loss"))
                loss.backward()
                return len(batch["inputs"])

            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            loader = runner.train_loop.dataloader_iterator  # the loop's own infinite iterator
            extra["flops_per_image"] = flops_per_image(model, [next(loader) for _ in range(2)], step)
        return extra


ADAPTER = MMDetAdapter()
