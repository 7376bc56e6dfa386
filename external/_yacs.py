"""What maskrcnn-benchmark and NVIDIA's Mask R-CNN (its descendant) share: their yacs YAML."""

from __future__ import annotations

import yaml

from .base import common_mismatches, gpus_and_batch

FPN_SCALES = [0.25, 0.125, 0.0625, 0.03125]


def maskrcnn_benchmark_yaml(cfg, per_image_post_nms_key: bool) -> tuple[dict, list[str]]:
    """The yacs config (as a dict) of canonical ``cfg`` and what it cannot match."""
    m, rpn, roi, inp, sol = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver
    gpus, batch, per_gpu = gpus_and_batch(cfg)
    bgr_mean = list(reversed(m.pixel_mean))
    native = {
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "WEIGHT": m.weights or "catalog://ImageNetPretrained/MSRA/R-50",
            "MASK_ON": True,
            "BACKBONE": {"CONV_BODY": "R-50-FPN", "FREEZE_CONV_BODY_AT": m.backbone.freeze_at},
            "RESNETS": {"BACKBONE_OUT_CHANNELS": m.fpn_out_channels, "STRIDE_IN_1X1": False},
            "RPN": {
                "USE_FPN": True,
                "ANCHOR_STRIDE": [4, 8, 16, 32, 64],
                "ANCHOR_SIZES": list(m.anchors.sizes),
                "ASPECT_RATIOS": list(m.anchors.aspect_ratios),
                "FG_IOU_THRESHOLD": rpn.fg_iou_thresh,
                "BG_IOU_THRESHOLD": rpn.bg_iou_thresh,
                "BATCH_SIZE_PER_IMAGE": rpn.batch_size_per_image,
                "POSITIVE_FRACTION": rpn.positive_fraction,
                "NMS_THRESH": rpn.nms_thresh,
                "PRE_NMS_TOP_N_TRAIN": rpn.pre_nms_topk_train,
                "PRE_NMS_TOP_N_TEST": rpn.pre_nms_topk_test,
                "POST_NMS_TOP_N_TRAIN": rpn.post_nms_topk_train,
                "POST_NMS_TOP_N_TEST": rpn.post_nms_topk_test,
                "FPN_POST_NMS_TOP_N_TRAIN": rpn.post_nms_topk_train,
                "FPN_POST_NMS_TOP_N_TEST": rpn.post_nms_topk_test,
            },
            "ROI_HEADS": {
                "USE_FPN": True,
                "FG_IOU_THRESHOLD": roi.fg_iou_thresh,
                "BG_IOU_THRESHOLD": roi.bg_iou_thresh,
                "BATCH_SIZE_PER_IMAGE": roi.batch_size_per_image,
                "POSITIVE_FRACTION": roi.positive_fraction,
                "SCORE_THRESH": roi.score_thresh_test,
                "NMS": roi.nms_thresh_test,
                "DETECTIONS_PER_IMG": roi.detections_per_image,
            },
            "ROI_BOX_HEAD": {
                "NUM_CLASSES": (m.num_classes or 80) + 1,
                "POOLER_RESOLUTION": roi.box_pooler_resolution,
                "POOLER_SCALES": FPN_SCALES,
                "POOLER_SAMPLING_RATIO": roi.pooler_sampling_ratio,
                "FEATURE_EXTRACTOR": "FPN2MLPFeatureExtractor",
                "PREDICTOR": "FPNPredictor",
                "MLP_HEAD_DIM": roi.box_head_fc_dim,
            },
            "ROI_MASK_HEAD": {
                "POOLER_SCALES": FPN_SCALES,
                "FEATURE_EXTRACTOR": "MaskRCNNFPNFeatureExtractor",
                "PREDICTOR": "MaskRCNNC4Predictor",
                "POOLER_RESOLUTION": roi.mask_pooler_resolution,
                "POOLER_SAMPLING_RATIO": roi.pooler_sampling_ratio,
                "RESOLUTION": 2 * roi.mask_pooler_resolution,
                "SHARE_BOX_FEATURE_EXTRACTOR": False,
                "CONV_LAYERS": [roi.mask_head_conv_dim] * roi.mask_head_num_conv,
            },
        },
        "DATASETS": {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]},
        "DATALOADER": {"SIZE_DIVISIBILITY": 32, "ASPECT_RATIO_GROUPING": inp.aspect_ratio_grouping},
        "INPUT": {
            "MIN_SIZE_TRAIN": list(inp.min_size_train),
            "MAX_SIZE_TRAIN": inp.max_size_train,
            "MIN_SIZE_TEST": inp.min_size_test,
            "MAX_SIZE_TEST": inp.max_size_test,
            "PIXEL_MEAN": bgr_mean,
            "PIXEL_STD": list(reversed(m.pixel_std)),
            "TO_BGR255": True,
        },
        "SOLVER": {
            "BASE_LR": sol.base_lr,
            "BIAS_LR_FACTOR": 1,
            "MOMENTUM": sol.momentum,
            "WEIGHT_DECAY": sol.weight_decay,
            "WEIGHT_DECAY_BIAS": sol.weight_decay,
            "GAMMA": sol.gamma,
            "STEPS": list(sol.steps),
            "WARMUP_FACTOR": sol.warmup_factor,
            "WARMUP_ITERS": sol.warmup_iters,
            "WARMUP_METHOD": sol.warmup_method,
            "MAX_ITER": cfg.benchmark.iters,
            "IMS_PER_BATCH": batch,
            "CHECKPOINT_PERIOD": 10**7,
        },
        "TEST": {"IMS_PER_BATCH": gpus},
    }
    notes = common_mismatches(cfg) + [
        "the box and RPN regression losses are smooth L1 with fixed betas (1/9 RPN, 1 box); "
        f"the canonical config asks for beta {rpn.smooth_l1_beta} / {roi.smooth_l1_beta}",
        "RoIAlign without the half-pixel offset (model.roi_heads.pooler_aligned=True cannot be set)"
        if roi.pooler_aligned
        else "",
        "weight decay applies to the normalization layers' parameters too (no separate norm decay)"
        if cfg.solver.weight_decay_norm != cfg.solver.weight_decay
        else "",
        f"input.horizontal_flip_prob={inp.horizontal_flip_prob}: the flip probability is fixed at 0.5"
        if inp.horizontal_flip_prob != 0.5
        else "",
    ]
    if per_image_post_nms_key:
        native["MODEL"]["RPN"]["FPN_POST_NMS_PER_BATCH"] = False
    else:
        notes.append(
            f"FPN_POST_NMS_TOP_N_TRAIN ({rpn.post_nms_topk_train}) is over the whole per-GPU batch, "
            f"not per image ({per_gpu} images per GPU)"
        )
    return native, [n for n in notes if n]


def dump(native: dict) -> str:
    return "# written by mrcnn-bench from the canonical config\n" + yaml.safe_dump(native, sort_keys=False)
