"""torchvision's Mask R-CNN R-50-FPN, trained the way torchvision's detection references train it.

torchvision has no trainer of its own: the loop here follows ``references/detection/engine.py``
(SGD on the parameters that require grad, warm-up, autocast + GradScaler, DDP), iteration-based,
and the data come through torchvision's own COCO dataset and transforms v2.

The model is built from torchvision's own parts, as its constructor takes them: anchors without
rounding (``model.anchors.round_to_pixels`` False) are its AnchorGenerator with the rounding left out,
a rounded resize (``input.resize_rounding`` round) is its GeneralizedRCNNTransform with the sides
rounded, and the RPN's low-quality rule is set on its Matcher.

Divergences that torchvision does not let us set (``RULES``; the parity table shows them):
- ``MultiScaleRoIAlign`` always calls ``roi_align(aligned=False)``;
- the box losses are smooth L1 with beta 1/9, the mask targets fractional unaligned RoIAlign crops;
- its RPN keeps proposals whose sides are >= ``min_size`` (so 0 would keep empty boxes: it runs 1e-3);
- test-time resizing reuses the training sizes (``min_size[-1]``, the one ``max_size``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import types
from dataclasses import asdict, dataclass, field

from ._common import (
    FLOAT_BILINEAR,
    PYTORCH_STYLE,
    attach_work_counters,
    count_result,
    data_spec,
    detections,
    float_images,
    forward_outputs,
    load_exact,
    load_initial_weights,
    num_classes,
    ordered_batches,
    phase_probe,
    proposal_hparams,
    rule_notes,
    sampling_hparams,
    schedule_length,
    solver_hparams,
    stand_in_optimizer,
    step_scheduler,
    train_spec,
    unsupported,
)
from .base import Adapter, DistInfo, UnsupportedConfig, python_version_of

#: torchvision's RPN default min_size (remove_small_boxes keeps sides >= it)
TORCHVISION_MIN_SIZE = 1e-3
_FIXED_BETA = 1.0 / 9
# the work rules torchvision cannot run every way (Adapter.divergences): key -> (supported value?, what it
# does)
RULES = {
    "model.roi_heads.pooler_aligned": (
        lambda v: not v,
        "torchvision's MultiScaleRoIAlign always uses aligned=False",
    ),
    "model.rpn.smooth_l1_beta": (
        lambda v: v == _FIXED_BETA,
        "torchvision's rpn.py computes the loss with a fixed smooth L1, beta 1/9",
    ),
    "model.roi_heads.smooth_l1_beta": (
        lambda v: v == _FIXED_BETA,
        "torchvision's fastrcnn_loss uses a fixed smooth L1, beta 1/9",
    ),
    "model.rpn.low_quality_min_iou": (
        lambda v: v == 0,
        "torchvision's Matcher keeps a box's best anchors at any IoU (0 only)",
    ),
    "model.rpn.min_proposal_size": (
        lambda v: v > 0,
        "torchvision's RPN keeps sides >= min_size, so 0 would keep empty "
        "proposals; it runs its default 1e-3",
    ),
    "model.roi_heads.mask_target": (
        lambda v: v == "bitmask_soft",
        "torchvision's maskrcnn_loss crops the full-image bitmask "
        "with unaligned RoIAlign and keeps fractions ('bitmask_soft' only)",
    ),
}


@dataclass
class TorchvisionNative:
    """Everything the adapter passes to torchvision, in torchvision's own terms."""

    model_kwargs: dict
    backbone: dict
    box_head: dict
    mask_head: dict
    pooler: dict
    optimizer: dict
    schedule: dict
    data: dict
    train: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _to_device(images: list, targets: list[dict], device) -> tuple[list, list[dict]]:
    """A batch of the loader on ``device``, as the training loop copies it."""
    return (
        [img.to(device, non_blocking=True) for img in images],
        [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets],
    )


def _model_kwargs(cfg, data) -> dict:
    """torchvision's maskrcnn_resnet50_fpn keywords: classes, transform sizes and normalisation, the RPN's
    and the box head's settings."""
    model_cfg, rpn, roi, inp = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input
    return dict(
        num_classes=num_classes(cfg, data) + 1,  # torchvision counts the background class
        min_size=tuple(inp.min_size_train),
        max_size=inp.max_size_train,
        image_mean=[v / 255.0 for v in model_cfg.pixel_mean],  # torchvision normalizes images in [0, 1]
        image_std=[v / 255.0 for v in model_cfg.pixel_std],
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
        rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        rpn_min_size=rpn.min_proposal_size if rpn.min_proposal_size > 0 else TORCHVISION_MIN_SIZE,
        box_score_thresh=roi.score_thresh_test,
        box_nms_thresh=roi.nms_thresh_test,
        box_detections_per_img=roi.detections_per_image,
        box_fg_iou_thresh=roi.fg_iou_thresh,
        box_bg_iou_thresh=roi.bg_iou_thresh,
        box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction,
    )


class TorchvisionAdapter(Adapter):
    name = "torchvision"
    install_hint = "pip install torchvision==0.29.1"

    def available(self):
        return python_version_of("torchvision")

    # ----------------------------------------------------------------- translate
    def translate(self, cfg, data=None) -> TorchvisionNative:
        model_cfg, rpn, roi, inp, solver, bench = (
            cfg.model,
            cfg.model.rpn,
            cfg.model.roi_heads,
            cfg.input,
            cfg.solver,
            cfg.benchmark,
        )
        if roi.box_head_num_fc != 2:
            raise UnsupportedConfig(
                "torchvision's TwoMLPHead has exactly 2 FC layers (model.roi_heads.box_head_num_fc)"
            )
        if model_cfg.effective_norm == "SyncBN" and bench.device != "cuda":
            raise UnsupportedConfig(
                "model.backbone.norm SyncBN needs CUDA (torch's SyncBatchNorm has no CPU kernel)"
            )
        levels = len(model_cfg.anchors.sizes)
        return TorchvisionNative(
            model_kwargs=_model_kwargs(cfg, data),
            backbone=dict(
                backbone_name=f"resnet{model_cfg.backbone.depth}",
                trainable_layers=5 - model_cfg.effective_freeze_at,
                norm=model_cfg.effective_norm,
                weights=model_cfg.weights,
                init_weights=model_cfg.init_weights,
                fpn_out_channels=model_cfg.fpn_out_channels,
                anchor_sizes=[[size] for size in model_cfg.anchors.sizes],
                aspect_ratios=[list(model_cfg.anchors.aspect_ratios)] * levels,
                round_anchors=model_cfg.anchors.round_to_pixels,
                rpn_low_quality_matches=rpn.low_quality_matches,
                resize_rounding=inp.resize_rounding,
            ),
            box_head=dict(representation_size=roi.box_head_fc_dim),
            mask_head=dict(layers=[roi.mask_head_conv_dim] * roi.mask_head_num_conv, dilation=1),
            pooler=dict(
                featmap_names=["0", "1", "2", "3"],
                box_output_size=roi.box_pooler_resolution,
                mask_output_size=roi.mask_pooler_resolution,
                sampling_ratio=roi.pooler_sampling_ratio,
            ),
            optimizer=dict(
                lr=solver.base_lr,
                momentum=solver.momentum,
                weight_decay=solver.weight_decay,
                norm_weight_decay=solver.weight_decay_norm,
            ),
            schedule=dict(
                warmup_iters=solver.warmup_iters,
                warmup_factor=solver.warmup_factor,
                steps=list(solver.steps),
                gamma=solver.gamma,
                max_iter=solver.max_iter,
            ),
            data=data_spec(cfg, data),
            train=train_spec(cfg),
        )

    # ------------------------------------------------------------------ model
    def build_model(self, native: TorchvisionNative):
        import torch
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.models.detection.faster_rcnn import TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
        from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

        spec = native.backbone
        norm_layer = {
            "FrozenBN": FrozenBatchNorm2d,
            "BN": torch.nn.BatchNorm2d,
            "SyncBN": torch.nn.BatchNorm2d,
        }[spec["norm"]]
        backbone = resnet_fpn_backbone(
            backbone_name=spec["backbone_name"],
            weights=None,
            norm_layer=norm_layer,
            trainable_layers=spec["trainable_layers"],
        )
        pooler = native.pooler
        box_pool = MultiScaleRoIAlign(
            pooler["featmap_names"], pooler["box_output_size"], pooler["sampling_ratio"]
        )
        mask_pool = MultiScaleRoIAlign(
            pooler["featmap_names"], pooler["mask_output_size"], pooler["sampling_ratio"]
        )
        channels = backbone.out_channels
        anchors = AnchorGenerator if spec.get("round_anchors", True) else parts().anchors
        model = MaskRCNN(
            backbone,
            rpn_anchor_generator=anchors(
                tuple(tuple(sizes) for sizes in spec["anchor_sizes"]),
                tuple(tuple(ratios) for ratios in spec["aspect_ratios"]),
            ),
            box_roi_pool=box_pool,
            box_head=TwoMLPHead(
                channels * pooler["box_output_size"] ** 2, native.box_head["representation_size"]
            ),
            mask_roi_pool=mask_pool,
            mask_head=MaskRCNNHeads(channels, native.mask_head["layers"], native.mask_head["dilation"]),
            **native.model_kwargs,
        )
        matcher = model.rpn.proposal_matcher
        model.rpn.proposal_matcher = type(matcher)(
            matcher.high_threshold,
            matcher.low_threshold,
            allow_low_quality_matches=spec.get("rpn_low_quality_matches", True),
        )
        if spec.get("resize_rounding", "floor") == "round":
            t = model.transform
            model.transform = parts().transform(
                t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible
            )
        if spec.get("init_weights"):  # the shared initialisation already holds model.weights
            load_exact(model, load_initial_weights(spec["init_weights"]), spec["init_weights"])
        elif spec["weights"]:
            load_weights(model, spec["weights"])
        if spec["norm"] == "SyncBN":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    # ------------------------------------------------------- effective hparams
    def effective_hparams(self, native: TorchvisionNative) -> dict:
        """Read back from the built model, section by section (base.CANONICAL_HPARAM_KEYS)."""
        model = self.build_model(native)
        return {
            **_backbone_hparams(model),
            **_rpn_hparams(model.rpn),
            **_roi_hparams(model.roi_heads),
            **_input_hparams(model.transform, native.data),
            **self._solver_hparams(native),
            "info.backbone_style": PYTORCH_STYLE,  # torchvision's ResNet (v1.5)
            "info.roi_low_quality_matches": False,
            "info.resize_interpolation": FLOAT_BILINEAR,
            "info.roi_gt_as_proposals": True,
            "_notes": {
                **rule_notes(RULES),
                "input.min_size_test": "torchvision resizes test images with min_size[-1] of the training "
                "sizes",
                "input.max_size_test": "torchvision uses one max_size for training and test",
            },
        }

    def divergences(self, cfg) -> dict:
        return unsupported(cfg, RULES)

    def _solver_hparams(self, native: TorchvisionNative) -> dict:
        optimizer = native.optimizer
        return solver_hparams(
            ims_per_process=native.data["batch_size_per_process"],
            base_lr=optimizer["lr"],
            momentum=optimizer["momentum"],
            weight_decay=optimizer["weight_decay"],
            weight_decay_norm=optimizer["norm_weight_decay"],
            warmup_method="linear",
            lrs=self.lr_trajectory(native, schedule_length(native.schedule)),
        )

    def torchvision_names(self, state: dict) -> dict:
        return dict(state)  # its own

    def forward_features(self, cfg, images) -> dict:
        model = self.build_model(self.translate(cfg)).train()
        features = list(model.backbone(images).values())
        return forward_outputs(features, *model.rpn.head(features))

    def lr_trajectory(self, native: TorchvisionNative, n: int) -> list[float]:
        """The learning rate of iterations 0..n-1, from the scheduler a run builds."""
        optimizer = stand_in_optimizer(native.optimizer["lr"])
        return step_scheduler(optimizer, build_scheduler(optimizer, native.schedule).step, n)

    # ------------------------------------------------------------------ data
    def build_loader(self, native: TorchvisionNative, dist: DistInfo):
        import torch
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
        from torchvision.transforms import v2

        data_opts = native.data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
            dataset = CocoDetection(data_opts["train_images"], data_opts["train_json"])
        coco = dataset.coco
        cat_ids = sorted(coco.getCatIds())
        label_of = {c: i + 1 for i, c in enumerate(cat_ids)}  # contiguous labels, 0 = background
        if data_opts["filter_empty"]:
            dataset.ids = [
                i for i in dataset.ids if any(not a.get("iscrowd", 0) for a in coco.imgToAnns.get(i, []))
            ]
        dataset = wrap_dataset_for_transforms_v2(
            dataset, target_keys=("boxes", "labels", "masks", "image_id", "iscrowd")
        )
        transforms = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomHorizontalFlip(data_opts["horizontal_flip_prob"]),
                v2.ToDtype(torch.float32, scale=True),
                v2.SanitizeBoundingBoxes(
                    labels_getter=lambda sample: (
                        sample[1]["labels"],
                        sample[1]["masks"],
                        sample[1]["iscrowd"],
                    )
                ),
            ]
        )
        image_ids = list(dataset.ids)
        dataset = _Transformed(dataset, transforms, label_of)
        # the run's one data order, endless: no epoch restart (nor worker restart) inside the window
        batch_sampler = ordered_batches(
            data_opts, dist, image_ids, f"torchvision ({data_opts['train_json']})"
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=data_opts["num_workers"],
            collate_fn=_collate,
            persistent_workers=data_opts["num_workers"] > 0,
            pin_memory=dist.device.startswith("cuda"),
        )
        return loader

    # ----------------------------------------------------------------- train
    def train(self, cfg, data, timer, dist: DistInfo, native=None) -> dict:
        import torch
        from mrcnn_bench.harness.engine.timing import raise_if_not_finite

        native = self.translated(cfg, data, native)
        train_opts = native.train
        torch.manual_seed(train_opts["seed"] + dist.rank)
        device = torch.device(dist.device)
        model = self.build_model(native).to(device)
        attach_work_counters(
            timer,
            backbone=model.backbone,
            rpn=model.rpn,
            box_pooler=model.roi_heads.box_roi_pool,
            mask_pooler=model.roi_heads.mask_roi_pool,
        )
        # the RPN's sampled positive anchors: its sampler returns per-image masks (positives, negatives)
        count_result(
            timer, model.rpn, "fg_bg_sampler", "rpn_positives", lambda out: sum(int(p.sum()) for p in out[0])
        )
        roi = model.roi_heads
        phase_probe(
            cfg,
            timer,
            dist.device,
            model,
            ranges=self.task.phase_ranges,
            preprocess=[model.transform],
            backbone=[model.backbone.body],
            fpn=[model.backbone.fpn],
            rpn=[model.rpn],
            rpn_head=[model.rpn.head],
            roi_heads=[roi],
            roi_pooling=[roi.box_roi_pool, roi.mask_roi_pool],
            box_head=[roi.box_head, roi.box_predictor],
            mask_head=[roi.mask_head, roi.mask_predictor],
        )
        if train_opts["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = build_optimizer(model, native.optimizer)
        scheduler = build_scheduler(optimizer, native.schedule)
        ddp_model = model
        if dist.distributed:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[train_opts["dtype"]]
        scaler = torch.amp.GradScaler(device.type, enabled=train_opts["dtype"] == "fp16")
        it = iter(self.build_loader(native, dist))
        timer.before_train()
        for _ in range(train_opts["iters"]):
            data_time = 0.0
            images_seen = 0
            for micro in range(train_opts["grad_accum"]):
                t0 = time.perf_counter()
                batch = next(it)
                data_time += time.perf_counter() - t0
                images, targets = _to_device(*batch, device)
                sync_ctx = (
                    ddp_model.no_sync()
                    if (dist.distributed and micro < train_opts["grad_accum"] - 1)
                    else contextlib.nullcontext()
                )
                with sync_ctx:
                    with torch.autocast(
                        device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                    ):
                        loss_dict = ddp_model(images, targets)
                        loss = sum(loss_dict.values())
                    scaler.scale(loss / train_opts["grad_accum"]).backward()
                images_seen += len(images)
            loss_value = float(loss.detach())
            raise_if_not_finite(loss_value, timer.next_iter, loss_dict)  # before the step applies it
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            timer.after_step(images_seen, loss=loss_value, data_time=data_time, lr=lr)
        self.trained_model = model
        return {"native_config": native.to_dict()}

    def input_pipeline(self, cfg, data, dist: DistInfo, native=None):
        """``build_loader`` (CocoDetection wrapped for transforms v2, the run's batch order) and the copy of
        images and targets to the device that ``train`` makes."""
        import torch

        device = torch.device(dist.device)
        return iter(self.build_loader(self.translated(cfg, data, native), dist)), lambda batch: len(
            _to_device(*batch, device)[0]
        )

    def loader_stages(self, native):
        import sys

        from mrcnn_bench.harness.data.stages import LoaderStages
        from torchvision.datasets import CocoDetection

        return LoaderStages(
            item=[(_Transformed, "__getitem__")],
            decode=[(CocoDetection, "_load_image")],
            collate=[(sys.modules[__name__], "_collate")],
            transform="the v2 wrapper's boxes and masks from the annotations, the flip, to float, "
            "SanitizeBoundingBoxes, labels; no resize (GeneralizedRCNNTransform resizes on the "
            "device)",
        )

    def predictor(self, cfg, data, dist: DistInfo, model=None, native=None):
        """``model.eval()``: GeneralizedRCNNTransform resizes (to the test size set on it: torchvision
        otherwise reuses the last training size), normalises and batches; the RoI heads' test path;
        ``transform.postprocess`` pastes the masks at the image's size."""
        import torch

        if model is None:
            model = self.build_model(self.translated(cfg, data, native)).to(dist.device)
        model.eval()
        if cfg.benchmark.channels_last:
            model.to(memory_format=torch.channels_last)
        model.transform.min_size = (cfg.input.min_size_test,)
        model.transform.max_size = cfg.input.max_size_test

        def predict(images):
            return [
                detections(r["boxes"], r["scores"], r["labels"], r["masks"][:, 0])
                for r in model(float_images(images, dist.device))
            ]

        return predict


class _Transformed:
    """Applies v2 transforms, keeps non-crowd instances and maps category ids to contiguous labels."""

    def __init__(self, dataset, transforms, label_of):
        self.dataset, self.transforms, self.label_of = dataset, transforms, label_of

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        import torch

        image, target = self.dataset[idx]
        # The v2 wrapper gives iscrowd as a list (and no key at all for an image without annotations).
        target["iscrowd"] = torch.as_tensor(target.get("iscrowd", []), dtype=torch.int64)
        image, target = self.transforms(image, target)
        keep = target["iscrowd"] == 0
        labels = torch.tensor([self.label_of[int(c)] for c in target["labels"][keep]], dtype=torch.int64)
        return image, {
            "boxes": target["boxes"][keep].as_subclass(torch.Tensor),
            "labels": labels,
            "masks": target["masks"][keep].as_subclass(torch.Tensor).to(torch.uint8),
            "image_id": torch.tensor(target["image_id"]),
        }


def _collate(batch):
    return tuple(zip(*batch))


def build_scheduler(optimizer, schedule: dict):
    """torchvision's detection recipe (references/detection/train.py), per iteration: a LinearLR
    warm-up from ``warmup_factor`` over ``warmup_iters`` chained with MultiStepLR at ``steps``."""
    import torch

    sched = torch.optim.lr_scheduler
    steps = sched.MultiStepLR(optimizer, milestones=list(schedule["steps"]), gamma=schedule["gamma"])
    if schedule["warmup_iters"] <= 0:
        return steps
    warmup = sched.LinearLR(
        optimizer, start_factor=schedule["warmup_factor"], total_iters=schedule["warmup_iters"]
    )
    return sched.ChainedScheduler([warmup, steps], optimizer=optimizer)


def build_optimizer(model, opt: dict):
    """SGD as torchvision's recipe builds it with ``--norm-weight-decay``: normalization layers'
    parameters (torchvision.ops._utils.split_normalization_params) in a group of their own."""
    import torch
    from torchvision.ops._utils import split_normalization_params

    norm_params, other_params = split_normalization_params(model)
    groups = [
        {"params": [p for p in other_params if p.requires_grad], "weight_decay": opt["weight_decay"]},
        {"params": [p for p in norm_params if p.requires_grad], "weight_decay": opt["norm_weight_decay"]},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=opt["lr"], momentum=opt["momentum"])


def load_weights(model, path: str) -> None:
    """A full torchvision Mask R-CNN state dict, or an ImageNet ResNet-50 one for the backbone."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    if any(k.startswith("backbone.") for k in state):
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        missing, unexpected = model.backbone.body.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
        )
    if unexpected:
        raise ValueError(f"{path}: unexpected keys in checkpoint: {unexpected[:5]}")


# ------------------------------------------------------------- effective hparams, by section
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def _backbone_hparams(model) -> dict:
    from torchvision.ops import FrozenBatchNorm2d

    body, anchors = model.backbone.body, model.rpn.anchor_generator
    frozen = [name for name in _STAGES if not any(p.requires_grad for p in getattr(body, name).parameters())]
    return {
        "model.num_classes": model.roi_heads.box_predictor.cls_score.out_features - 1,
        "model.pixel_mean": [round(v * 255.0, 4) for v in model.transform.image_mean],
        "model.pixel_std": [round(v * 255.0, 4) for v in model.transform.image_std],
        "model.backbone.depth": 50 if len(body.layer3) == 6 else None,
        "model.backbone.freeze_at": 0 if not frozen else 1 + _STAGES.index(frozen[-1]),
        "model.backbone.norm": "FrozenBN"
        if isinstance(body.bn1, FrozenBatchNorm2d)
        else type(body.bn1).__name__.replace("BatchNorm2d", "BN"),
        "model.fpn_out_channels": model.backbone.out_channels,
        "model.anchors.sizes": [sizes[0] for sizes in anchors.sizes],
        "model.anchors.aspect_ratios": list(anchors.aspect_ratios[0]),
        "model.anchors.round_to_pixels": not isinstance(anchors, parts().anchors),
    }


def _rpn_hparams(rpn) -> dict:
    return {
        **sampling_hparams(
            "rpn",
            rpn.proposal_matcher.high_threshold,
            rpn.proposal_matcher.low_threshold,
            rpn.fg_bg_sampler.batch_size_per_image,
            rpn.fg_bg_sampler.positive_fraction,
        ),
        **proposal_hparams(
            rpn.nms_thresh,
            rpn._pre_nms_top_n["training"],
            rpn._post_nms_top_n["training"],
            rpn._pre_nms_top_n["testing"],
            rpn._post_nms_top_n["testing"],
        ),
        "model.rpn.smooth_l1_beta": _FIXED_BETA,  # fixed in torchvision's rpn.py
        "model.rpn.low_quality_matches": rpn.proposal_matcher.allow_low_quality_matches,
        "model.rpn.low_quality_min_iou": 0.0,  # Matcher.set_low_quality_matches_: any IoU
        "model.rpn.min_proposal_size": rpn.min_size,
    }


def _roi_hparams(roi) -> dict:
    box_fc = [mod for mod in roi.box_head.modules() if mod.__class__.__name__ == "Linear"]
    mask_convs = [mod for mod in roi.mask_head.modules() if mod.__class__.__name__ == "Conv2d"]
    return {
        **sampling_hparams(
            "roi_heads",
            roi.proposal_matcher.high_threshold,
            roi.proposal_matcher.low_threshold,
            roi.fg_bg_sampler.batch_size_per_image,
            roi.fg_bg_sampler.positive_fraction,
        ),
        "model.roi_heads.box_pooler_resolution": roi.box_roi_pool.output_size[0],
        "model.roi_heads.mask_pooler_resolution": roi.mask_roi_pool.output_size[0],
        "model.roi_heads.pooler_sampling_ratio": roi.box_roi_pool.sampling_ratio,
        "model.roi_heads.pooler_aligned": False,  # hard-coded in MultiScaleRoIAlign.forward
        "model.roi_heads.box_head_num_fc": len(box_fc),
        "model.roi_heads.box_head_fc_dim": box_fc[0].out_features,
        "model.roi_heads.mask_head_num_conv": len(mask_convs),
        "model.roi_heads.mask_head_conv_dim": mask_convs[0].out_channels,
        "model.roi_heads.score_thresh_test": roi.score_thresh,
        "model.roi_heads.nms_thresh_test": roi.nms_thresh,
        "model.roi_heads.detections_per_image": roi.detections_per_img,
        "model.roi_heads.smooth_l1_beta": _FIXED_BETA,  # fixed in torchvision's roi_heads.py
        "model.roi_heads.mask_target": "bitmask_soft",  # roi_heads.project_masks_on_boxes
    }


def _input_hparams(transform, data: dict) -> dict:
    return {
        "input.min_size_train": list(transform.min_size),
        "input.max_size_train": transform.max_size,
        "input.min_size_test": transform.min_size[-1],
        "input.max_size_test": transform.max_size,
        "input.horizontal_flip_prob": data["horizontal_flip_prob"],
        "input.resize_rounding": "round" if isinstance(transform, parts().transform) else "floor",
        "input.filter_empty_annotations": data["filter_empty"],
        "input.aspect_ratio_grouping": data["order"][
            "group_by_aspect"
        ],  # in the run's data order, which its loader follows
    }


# ------------------------------------------------------------- torchvision's parts, other rules
@functools.cache
def parts():
    """torchvision's parts with another rule: ``parts().anchors`` and ``parts().transform`` (made on first
    use: importing this module never imports torchvision)."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    class FractionalAnchorGenerator(AnchorGenerator):
        """torchvision's AnchorGenerator with its cell anchors' corners kept as computed, not rounded
        to whole pixels (detectron2's and mmdet's anchors)."""

        def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):  # noqa: B008 (its own signature)
            scales = torch.as_tensor(scales, dtype=dtype, device=device)
            aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
            h_ratios = torch.sqrt(aspect_ratios)
            ws = (1 / h_ratios[:, None] * scales[None, :]).view(-1)
            hs = (h_ratios[:, None] * scales[None, :]).view(-1)
            return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    class RoundingTransform(GeneralizedRCNNTransform):
        """torchvision's transform with the resized sides rounded to the nearest pixel (detectron2's
        and mmdet's rule) where its own floors them; the scale, its draw and the interpolation as its own."""

        def resize(self, image, target=None):
            h, w = image.shape[-2:]
            size = float(self.torch_choice(self.min_size) if self.training else self.min_size[-1])
            scale = min(size / min(h, w), float(self.max_size) / max(h, w))
            out = [int(h * scale + 0.5), int(w * scale + 0.5)]
            image = F.interpolate(image[None], size=out, mode="bilinear", align_corners=False)[0]
            if target is None:
                return image, target
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
            if "masks" in target:
                target["masks"] = F.interpolate(target["masks"][:, None].float(), size=out)[:, 0].byte()
            return image, target

    return types.SimpleNamespace(anchors=FractionalAnchorGenerator, transform=RoundingTransform)


ADAPTERS = [TorchvisionAdapter()]
