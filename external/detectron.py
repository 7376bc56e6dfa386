"""Detectron (facebookresearch/Detectron): Caffe2, Python 2, the 2018 baselines' code."""

from __future__ import annotations

import yaml

from .base import ExternalSystem, Translation, common_mismatches, gpus_and_batch, shell


class Detectron(ExternalSystem):
    def translate(self, cfg) -> Translation:
        m, rpn, roi, inp, sol = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        native = {
            "MODEL": {
                "TYPE": "generalized_rcnn",
                "CONV_BODY": "FPN.add_fpn_ResNet50_conv5_body",
                "NUM_CLASSES": (m.num_classes or 80) + 1,
                "FASTER_RCNN": True,
                "MASK_ON": True,
            },
            "NUM_GPUS": gpus,
            "SOLVER": {
                "WEIGHT_DECAY": sol.weight_decay,
                "LR_POLICY": "steps_with_decay",
                "BASE_LR": sol.base_lr,
                "GAMMA": sol.gamma,
                "MAX_ITER": cfg.benchmark.iters + 1,
                "STEPS": [0, *sol.steps],
                "WARMUP_ITERS": sol.warmup_iters,
                "WARMUP_FACTOR": sol.warmup_factor,
                "WARMUP_METHOD": sol.warmup_method,
                "MOMENTUM": sol.momentum,
            },
            "FPN": {
                "FPN_ON": True,
                "MULTILEVEL_ROIS": True,
                "MULTILEVEL_RPN": True,
                "DIM": m.fpn_out_channels,
                "RPN_ANCHOR_START_SIZE": m.anchors.sizes[0],
                "RPN_ASPECT_RATIOS": list(m.anchors.aspect_ratios),
            },
            "RESNETS": {"STRIDE_1X1": False},
            "FAST_RCNN": {
                "ROI_BOX_HEAD": "fast_rcnn_heads.add_roi_2mlp_head",
                "ROI_XFORM_METHOD": "RoIAlign",
                "ROI_XFORM_RESOLUTION": roi.box_pooler_resolution,
                "ROI_XFORM_SAMPLING_RATIO": roi.pooler_sampling_ratio,
                "MLP_HEAD_DIM": roi.box_head_fc_dim,
            },
            "MRCNN": {
                "ROI_MASK_HEAD": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
                "RESOLUTION": 2 * roi.mask_pooler_resolution,
                "ROI_XFORM_METHOD": "RoIAlign",
                "ROI_XFORM_RESOLUTION": roi.mask_pooler_resolution,
                "ROI_XFORM_SAMPLING_RATIO": roi.pooler_sampling_ratio,
                "DIM_REDUCED": roi.mask_head_conv_dim,
                "DILATION": 1,
                "CONV_INIT": "MSRAFill",
            },
            "TRAIN": {
                "WEIGHTS": m.weights or "",
                "DATASETS": ["coco_2017_train"],
                "SCALES": list(inp.min_size_train),
                "MAX_SIZE": inp.max_size_train,
                "IMS_PER_BATCH": per_gpu,
                "BATCH_SIZE_PER_IM": roi.batch_size_per_image,
                "FG_THRESH": roi.fg_iou_thresh,
                "BG_THRESH_HI": roi.bg_iou_thresh,
                "BG_THRESH_LO": 0.0,
                "FG_FRACTION": roi.positive_fraction,
                "RPN_POSITIVE_OVERLAP": rpn.fg_iou_thresh,
                "RPN_NEGATIVE_OVERLAP": rpn.bg_iou_thresh,
                "RPN_FG_FRACTION": rpn.positive_fraction,
                "RPN_BATCH_SIZE_PER_IM": rpn.batch_size_per_image,
                "RPN_NMS_THRESH": rpn.nms_thresh,
                "RPN_PRE_NMS_TOP_N": rpn.pre_nms_topk_train,
                "RPN_POST_NMS_TOP_N": rpn.post_nms_topk_train,
                "USE_FLIPPED": inp.horizontal_flip_prob > 0,
                "FREEZE_AT": m.backbone.freeze_at,
                "ASPECT_GROUPING": inp.aspect_ratio_grouping,
                "SNAPSHOT_ITERS": 10**7,
            },
            "TEST": {
                "DATASETS": ["coco_2017_val"],
                "SCALE": inp.min_size_test,
                "MAX_SIZE": inp.max_size_test,
                "NMS": roi.nms_thresh_test,
                "RPN_PRE_NMS_TOP_N": rpn.pre_nms_topk_test,
                "RPN_POST_NMS_TOP_N": rpn.post_nms_topk_test,
                "DETECTIONS_PER_IM": roi.detections_per_image,
                "SCORE_THRESH": roi.score_thresh_test,
            },
            "PIXEL_MEANS": [[list(reversed(m.pixel_mean))]],
            "OUTPUT_DIR": "/tmp/detectron",
        }
        notes = common_mismatches(cfg) + [
            f"model.pixel_std={m.pixel_std}: Detectron subtracts a mean and divides by nothing",
            f"model.rpn.post_nms_topk_train={rpn.post_nms_topk_train} is per image; Detectron's "
            "RPN_POST_NMS_TOP_N "
            f"in FPN training is over the whole per-GPU batch ({per_gpu} images)",
            "the box and RPN regression losses are smooth L1 with fixed betas (1/9 RPN, 1 box)",
            "RoIAlign without the half-pixel offset" if roi.pooler_aligned else "",
            "anchors: one size per FPN level from FPN.RPN_ANCHOR_START_SIZE doubling "
            f"({m.anchors.sizes[0]}..{m.anchors.sizes[0] * 16}); {list(m.anchors.sizes)} asked for"
            if list(m.anchors.sizes) != [m.anchors.sizes[0] * 2**i for i in range(5)]
            else "",
            "horizontal flips: USE_FLIPPED adds a flipped copy of every image (probability 0.5 per draw)"
            if inp.horizontal_flip_prob not in (0.0, 0.5)
            else "",
        ]
        command = shell(
            "python2", "tools/train_net.py", "--cfg", "/mrcnn-bench/detectron.yaml", "--skip-test"
        )
        text = (
            "# written by mrcnn-bench from the canonical config. MAX_ITER is one more than benchmark.iters: "
            "Detectron\n"
            "# counts iterations from 0 and logs every 20, so the log has a line after the window's last "
            "one.\n" + yaml.safe_dump(native, sort_keys=False)
        )
        return Translation({"detectron.yaml": text}, command, [n for n in notes if n])


SYSTEM = Detectron(
    "detectron",
    "Detectron (Caffe2)",
    "https://github.com/facebookresearch/Detectron",
    log_format="detectron",
    workdir="/detectron",
)
