"""The native reference Mask R-CNN (mrcnn_bench.reference_impl), with its own ops and training loop."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from ._common import (
    FLOAT_BILINEAR,
    PYTORCH_STYLE,
    attach_work_counters,
    count_result,
    count_work,
    data_spec,
    detections,
    float_images,
    forward_outputs,
    num_classes,
    ordered_batches,
    phase_probe,
    pixels,
    proposal_hparams,
    sampling_hparams,
    schedule_length,
    solver_hparams,
    stand_in_optimizer,
    step_scheduler,
    train_spec,
)
from .base import Adapter, DistInfo, UnsupportedConfig, python_version_of


@dataclass
class ReferenceNative:
    model: object  # reference_impl.config.ReferenceConfig
    solver: dict
    data: dict
    train: dict = field(default_factory=dict)
    weights: str | None = None
    init_weights: str | None = (
        None  # the run's shared initialisation (torchvision's layout), loaded over ours
    )
    # speed switches that cannot act on this device, turned off: {"lever", "why"} each (not part of to_dict)
    fallbacks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "solver": self.solver,
            "data": self.data,
            "train": self.train,
            "weights": self.weights,
            "init_weights": self.init_weights,
        }


class ReferenceAdapter(Adapter):
    name = "reference"
    install_hint = (
        "make setup (builds mrcnn_bench.reference_impl._C; without it the ops fall back to pure PyTorch)"
    )

    def available(self):
        ok, why = python_version_of("mrcnn_bench.reference_impl.ops")  # an import error: unavailable, with it
        if not ok:
            return False, why
        from importlib.metadata import PackageNotFoundError, version

        from mrcnn_bench.reference_impl import ops

        try:
            installed = version("mrcnn-bench")
        except PackageNotFoundError:
            installed = "source"
        return True, f"{installed}, ops {ops.backend()}"

    def translate(self, cfg, data=None) -> ReferenceNative:
        from mrcnn_bench.reference_impl.config import ReferenceConfig

        bench, sol = cfg.benchmark, cfg.solver
        if cfg.model.effective_norm == "SyncBN" and bench.device != "cuda":
            raise UnsupportedConfig("model.backbone.norm SyncBN needs CUDA")
        if bench.device == "cuda":
            from mrcnn_bench.reference_impl import ops

            if ops.NATIVE and not ops.CUDA_KERNELS:
                # Timing the pure-PyTorch ops as "the reference" would misreport it.
                raise UnsupportedConfig(
                    f"benchmark.device=cuda, but {ops.NO_CUDA_KERNELS} "
                    "(or MRCNN_BENCH_OPS=fallback to time the fallback on purpose)"
                )
        model, fallbacks = ReferenceConfig.from_canonical(cfg, num_classes(cfg, data)), []
        if model.perf.cuda_graphs and bench.device != "cuda":
            model = replace(model, perf=replace(model.perf, cuda_graphs=False))
            fallbacks.append(
                {
                    "lever": "reference.cuda_graphs",
                    "why": f"CUDA graphs need CUDA, the run is on {bench.device}",
                }
            )
        return ReferenceNative(
            model=model,
            solver=dict(
                base_lr=sol.base_lr,
                momentum=sol.momentum,
                weight_decay=sol.weight_decay,
                weight_decay_norm=sol.weight_decay_norm,
                warmup_iters=sol.warmup_iters,
                warmup_factor=sol.warmup_factor,
                steps=list(sol.steps),
                gamma=sol.gamma,
                max_iter=sol.max_iter,
            ),
            data=data_spec(cfg, data),
            train=train_spec(cfg),
            weights=cfg.model.weights,
            init_weights=cfg.model.init_weights,
            fallbacks=fallbacks,
        )

    def build_model(self, native: ReferenceNative):
        from mrcnn_bench.reference_impl.modeling import MaskRCNN, load_torchvision_weights

        model = MaskRCNN.from_config(native.model)
        if native.init_weights:  # the shared initialisation already holds model.weights
            load_torchvision_weights(model, native.init_weights)
        elif native.weights:
            load_torchvision_weights(model, native.weights)
        return model

    def effective_hparams(self, native: ReferenceNative) -> dict:
        """Read back from the built model, section by section (base.CANONICAL_HPARAM_KEYS)."""
        model = self.build_model(native)
        solver = native.solver
        return {
            **_backbone_hparams(model),
            **_rpn_hparams(model.rpn),
            **_roi_hparams(model.roi_heads),
            **_input_hparams(model.preprocess, native.data),
            **solver_hparams(
                ims_per_process=native.data["batch_size_per_process"],
                base_lr=solver["base_lr"],
                momentum=solver["momentum"],
                weight_decay=solver["weight_decay"],
                weight_decay_norm=solver["weight_decay_norm"],
                warmup_method="linear",
                lrs=self.lr_trajectory(native, schedule_length(solver)),
            ),
            "info.backbone_style": PYTORCH_STYLE,
            "info.roi_low_quality_matches": False,
            "info.resize_interpolation": FLOAT_BILINEAR,
            "info.roi_gt_as_proposals": True,
            "_notes": {},
        }

    def torchvision_names(self, state: dict) -> dict:
        from mrcnn_bench.reference_impl.modeling import to_torchvision_state_dict

        return to_torchvision_state_dict(state)

    def forward_features(self, cfg, images) -> dict:
        model = self.build_model(self.translate(cfg)).train()
        features = model.backbone(images)
        return forward_outputs(features, *model.rpn.head(features))

    def lr_trajectory(self, native: ReferenceNative, n: int) -> list[float]:
        """The learning rate of iterations 0..n-1, from the scheduler a run builds."""
        optimizer = stand_in_optimizer(native.solver["base_lr"])
        return step_scheduler(optimizer, build_scheduler(optimizer, native.solver).step, n)

    def build_trainer(self, cfg, data, dist: DistInfo, after_step=None, native=None):
        """(native config, reference Trainer) as a run builds them: model, optimizer, schedule, loader."""
        import torch
        from mrcnn_bench.reference_impl.engine import Trainer, build_optimizer

        native = self.translated(cfg, data, native)
        train_opts, solver = native.train, native.solver
        torch.manual_seed(train_opts["seed"] + dist.rank)
        device = torch.device(dist.device)
        model = self.build_model(native)
        if native.model.backbone.norm == "SyncBN" and dist.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        if train_opts["channels_last"] or native.model.perf.channels_last:
            model.set_channels_last(True)
        for fallback in native.fallbacks:
            warnings.warn(f"{fallback['lever']}: {fallback['why']}; running without it", stacklevel=2)
        model.lever_fallbacks[:0] = native.fallbacks
        if native.model.perf.keep_freed_memory:
            from mrcnn_bench.reference_impl.engine.allocator import keep_freed_memory

            if not keep_freed_memory(True):  # it has warned why
                model.lever_fallbacks.append(
                    {"lever": "reference.keep_freed_memory", "why": "glibc's mallopt unavailable or refused"}
                )
        optimizer = build_optimizer(
            model,
            lr=solver["base_lr"],
            momentum=solver["momentum"],
            weight_decay=solver["weight_decay"],
            weight_decay_norm=solver["weight_decay_norm"],
        )
        scheduler = build_scheduler(optimizer, solver)
        loader = _train_loader(native, dist)
        trainer = Trainer(
            model,
            optimizer,
            scheduler,
            loader,
            device=device,
            dtype=train_opts["dtype"],
            grad_accum=train_opts["grad_accum"],
            ddp=dist.distributed,
            after_step=after_step,
            autocast_cache=not native.model.perf.cuda_graphs,
        )
        return native, trainer

    def train(self, cfg, data, timer, dist: DistInfo, native=None) -> dict:
        from mrcnn_bench.reference_impl import ops

        native, trainer = self.build_trainer(cfg, data, dist, after_step=timer.after_step, native=native)
        model, train_opts = trainer.model, native.train
        # the pixels from the preprocessor's padded batch: with CUDA graphs the backbone module is not called
        count_work(timer, model.preprocess, "pixels", lambda out: pixels(out[0].tensor))
        attach_work_counters(
            timer,
            backbone=None,
            rpn=model.rpn,
            box_pooler=model.roi_heads.box_pooler,
            mask_pooler=model.roi_heads.mask_pooler,
        )
        # the RPN's sampled positive anchors: the targets builders return (labels, positives, negatives,
        # targets)
        for builder in ("_targets_batched", "_targets_per_image"):
            count_result(timer, model.rpn, builder, "rpn_positives", lambda out: out[1].numel())
        roi = model.roi_heads
        phase_probe(
            cfg,
            timer,
            dist.device,
            model,
            ranges=self.task.phase_ranges,
            preprocess=[model.preprocess],
            backbone=[model.backbone.body],
            fpn=[model.backbone.fpn],
            rpn=[model.rpn],
            rpn_head=[model.rpn.head],
            roi_heads=[roi],
            roi_pooling=[roi.box_pooler, roi.mask_pooler],
            box_head=[roi.box_head],
            mask_head=[roi.mask_head],
        )
        timer.before_train()
        trainer.train(train_opts["iters"])
        self.trained_model = model
        # the switches that fell back to the eager path (this device, no compiler, no glibc): run.json keeps
        # them
        return {
            "native_config": native.to_dict(),
            "ops_backend": ops.backend(),
            "lever_fallbacks": model.lever_fallbacks,
        }

    def input_pipeline(self, cfg, data, dist: DistInfo, native=None):
        """The reference's loader (COCOInstances, its collate, the run's batch order) and its Trainer's copy
        of images and targets to the device."""
        import torch
        from mrcnn_bench.reference_impl.engine.trainer import to_device

        device = torch.device(dist.device)
        return iter(_train_loader(self.translated(cfg, data, native), dist)), lambda batch: len(
            to_device(*batch, device)[0]
        )

    def loader_stages(self, native):
        from mrcnn_bench.harness.data.stages import LoaderStages
        from mrcnn_bench.reference_impl.data import coco

        return LoaderStages(
            item=[(coco.COCOInstances, "__getitem__")],
            decode=[(coco, "decode_image")],
            collate=[(coco, "collate")],
            transform="boxes, labels and masks from the annotations, the flip; no resize (the model "
            "resizes on the device)",
        )

    def predictor(self, cfg, data, dist: DistInfo, model=None, native=None):
        """The model's own eval mode: resize to the test size, normalise, pad, then the heads' test
        path (score threshold, per-class NMS, top detections) and masks pasted at the image's size."""
        native = self.translated(cfg, data, native)
        if model is None:
            model = self.build_model(native).to(dist.device)
        model.eval()
        if cfg.benchmark.channels_last or native.model.perf.channels_last:
            model.set_channels_last(True)

        def predict(images):
            return [
                detections(r["boxes"], r["scores"], r["labels"], r["masks"][:, 0])
                for r in model(float_images(images, dist.device))
            ]

        return predict


def _train_loader(native: ReferenceNative, dist: DistInfo):
    """The reference's training loader: its dataset and collate, the run's batch order, its workers."""
    from mrcnn_bench.reference_impl.data import COCOInstances, build_train_loader

    data_opts, train_opts = native.data, native.train
    dataset = COCOInstances(
        data_opts["train_json"],
        data_opts["train_images"],
        flip_prob=data_opts["horizontal_flip_prob"],
        filter_empty=data_opts["filter_empty"],
        mask_format="polygon" if native.model.roi_heads.mask_target == "polygon" else "bitmask",
    )
    return build_train_loader(
        dataset,
        batch_size=data_opts["batch_size_per_process"],
        num_workers=data_opts["num_workers"],
        seed=train_opts["seed"],
        rank=dist.rank,
        world_size=dist.world_size,
        pin_memory=str(dist.device).startswith("cuda"),
        batch_sampler=ordered_batches(data_opts, dist, dataset.ids, f"reference ({data_opts['train_json']})"),
    )


def build_scheduler(optimizer, solver: dict):
    """The reference's learning-rate schedule: linear warm-up, then multi-step, per iteration."""
    import torch
    from mrcnn_bench.reference_impl.engine import warmup_multistep

    keys = ("warmup_iters", "warmup_factor", "steps", "gamma")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_multistep(**{k: solver[k] for k in keys}))


# ------------------------------------------------------------- effective hparams, by section
_STAGES = ["conv1", "layer1", "layer2", "layer3", "layer4"]
_NORM_OF = {"FrozenBatchNorm2d": "FrozenBN", "BatchNorm2d": "BN", "SyncBatchNorm": "SyncBN"}


def _backbone_hparams(model) -> dict:
    pre, body, anchors = model.preprocess, model.backbone.body, model.rpn.anchor_generator
    frozen = [
        stage for stage in _STAGES if not any(p.requires_grad for p in getattr(body, stage).parameters())
    ]
    norm = type(
        body.layer4[0].bn1
    ).__name__  # the norm of the trainable stages (frozen ones are always FrozenBN)
    return {
        "model.num_classes": model.roi_heads.num_classes,
        "model.pixel_mean": [round(float(v) * 255.0, 4) for v in pre.pixel_mean.flatten()],
        "model.pixel_std": [round(float(v) * 255.0, 4) for v in pre.pixel_std.flatten()],
        "model.backbone.depth": 50 if len(body.layer3) == 6 else None,
        "model.backbone.freeze_at": (_STAGES.index(frozen[-1]) + 1) if frozen else 0,
        "model.backbone.norm": _NORM_OF.get(norm, norm),
        "model.fpn_out_channels": model.backbone.out_channels,
        "model.anchors.sizes": list(anchors.sizes),
        "model.anchors.aspect_ratios": list(anchors.aspect_ratios),
        "model.anchors.round_to_pixels": anchors.round_to_pixels,
    }


def _rpn_hparams(rpn) -> dict:
    return {
        **sampling_hparams(
            "rpn",
            rpn.matcher.high,
            rpn.matcher.low,
            rpn.sampler.batch_size_per_image,
            rpn.sampler.positive_fraction,
        ),
        **proposal_hparams(
            rpn.nms_thresh,
            rpn.pre_nms_topk[0],
            rpn.post_nms_topk[0],
            rpn.pre_nms_topk[1],
            rpn.post_nms_topk[1],
        ),
        "model.rpn.smooth_l1_beta": rpn.smooth_l1_beta,
        "model.rpn.low_quality_matches": rpn.matcher.allow_low_quality_matches,
        "model.rpn.low_quality_min_iou": rpn.matcher.low_quality_min,
        "model.rpn.min_proposal_size": rpn.min_proposal_size,
    }


def _roi_hparams(roi) -> dict:
    return {
        **sampling_hparams(
            "roi_heads",
            roi.matcher.high,
            roi.matcher.low,
            roi.sampler.batch_size_per_image,
            roi.sampler.positive_fraction,
        ),
        "model.roi_heads.box_pooler_resolution": roi.box_pooler.output_size,
        "model.roi_heads.mask_pooler_resolution": roi.mask_pooler.output_size,
        "model.roi_heads.pooler_sampling_ratio": roi.box_pooler.sampling_ratio,
        "model.roi_heads.pooler_aligned": roi.box_pooler.aligned,
        "model.roi_heads.box_head_num_fc": len(roi.box_head.fcs),
        "model.roi_heads.box_head_fc_dim": roi.box_head.fcs[0].out_features,
        "model.roi_heads.mask_head_num_conv": len(roi.mask_head.convs),
        "model.roi_heads.mask_head_conv_dim": roi.mask_head.convs[0].out_channels,
        "model.roi_heads.score_thresh_test": roi.score_thresh,
        "model.roi_heads.nms_thresh_test": roi.nms_thresh,
        "model.roi_heads.detections_per_image": roi.detections_per_image,
        "model.roi_heads.smooth_l1_beta": roi.smooth_l1_beta,
        "model.roi_heads.mask_target": roi.mask_target,
    }


def _input_hparams(pre, data: dict) -> dict:
    return {
        "input.min_size_train": list(pre.min_size_train),
        "input.max_size_train": pre.max_size_train,
        "input.min_size_test": pre.min_size_test,
        "input.max_size_test": pre.max_size_test,
        "input.horizontal_flip_prob": data["horizontal_flip_prob"],
        "input.resize_rounding": pre.resize_rounding,
        "input.filter_empty_annotations": data["filter_empty"],
        "input.aspect_ratio_grouping": data["order"][
            "group_by_aspect"
        ],  # in the run's data order, which its loader follows
    }


ADAPTERS = [ReferenceAdapter()]
