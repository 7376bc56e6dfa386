"""tensorpack's FasterRCNN example (tensorpack/tensorpack, examples/FasterRCNN): TensorFlow 1."""

from __future__ import annotations

from .base import ExternalSystem, Translation, common_mismatches, gpus_and_batch, shell

STEPS_PER_EPOCH = 100  # epochs end on the window's boundaries (tensorpack logs time per epoch)


class Tensorpack(ExternalSystem):
    def images_per_iteration(self, cfg) -> int:
        return cfg.benchmark.gpus  # one image per GPU

    def overrides(self, cfg) -> list[str]:
        """``--config KEY=VALUE`` overrides of tensorpack's config.py."""
        m, rpn, roi, inp, sol = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver
        gpus, batch, _ = gpus_and_batch(cfg)
        # tensorpack trains one image per GPU and states its schedule in steps at a batch of 8
        to_batch8 = gpus / 8
        schedule = [int(s * batch / 8) for s in sol.steps] + [int(cfg.benchmark.iters * to_batch8)]
        values = {
            "MODE_MASK": True,
            "MODE_FPN": True,
            "DATA.BASEDIR": "/data/coco",
            "DATA.TRAIN": "('coco_train2017',)",
            "DATA.VAL": "('coco_val2017',)",
            "BACKBONE.WEIGHTS": m.weights or "",
            "BACKBONE.NORM": "FreezeBN",
            "BACKBONE.FREEZE_AT": min(m.backbone.freeze_at, 2),
            "BACKBONE.STRIDE_1X1": False,
            "TRAIN.BASE_LR": sol.base_lr * 8 / batch,
            "TRAIN.WEIGHT_DECAY": sol.weight_decay,
            "TRAIN.WARMUP": sol.warmup_iters,
            "TRAIN.WARMUP_INIT_LR": sol.base_lr * sol.warmup_factor * 8 / batch,
            "TRAIN.STEPS_PER_EPOCH": STEPS_PER_EPOCH,
            "TRAIN.LR_SCHEDULE": str(schedule),
            "TRAIN.EVAL_PERIOD": 0,
            "TRAIN.CHECKPOINT_PERIOD": 10**6,
            "PREPROC.TRAIN_SHORT_EDGE_SIZE": str([min(inp.min_size_train), max(inp.min_size_train)]),
            "PREPROC.MAX_SIZE": inp.max_size_train,
            "PREPROC.TEST_SHORT_EDGE_SIZE": inp.min_size_test,
            "RPN.ANCHOR_SIZES": str(tuple(m.anchors.sizes)),
            "RPN.ANCHOR_RATIOS": str(tuple(m.anchors.aspect_ratios)),
            "RPN.POSITIVE_ANCHOR_THRESH": rpn.fg_iou_thresh,
            "RPN.NEGATIVE_ANCHOR_THRESH": rpn.bg_iou_thresh,
            "RPN.FG_RATIO": rpn.positive_fraction,
            "RPN.BATCH_PER_IM": rpn.batch_size_per_image,
            "RPN.PROPOSAL_NMS_THRESH": rpn.nms_thresh,
            "RPN.TRAIN_PER_LEVEL_NMS_TOPK": rpn.pre_nms_topk_train,
            "RPN.TEST_PER_LEVEL_NMS_TOPK": rpn.pre_nms_topk_test,
            "FRCNN.BATCH_PER_IM": roi.batch_size_per_image,
            "FRCNN.FG_THRESH": roi.fg_iou_thresh,
            "FRCNN.FG_RATIO": roi.positive_fraction,
            "FPN.NUM_CHANNEL": m.fpn_out_channels,
            "FPN.FRCNN_FC_HEAD_DIM": roi.box_head_fc_dim,
            "MRCNN.HEAD_DIM": roi.mask_head_conv_dim,
            "TEST.FRCNN_NMS_THRESH": roi.nms_thresh_test,
            "TEST.RESULT_SCORE_THRESH": roi.score_thresh_test,
            "TEST.RESULTS_PER_IM": roi.detections_per_image,
        }
        return [f"{k}={v}" for k, v in values.items()]

    def translate(self, cfg) -> Translation:
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        notes = common_mismatches(cfg) + [
            f"one image per GPU: a global batch of {gpus}, not {batch} ({per_gpu} per GPU); the learning "
            "rate is "
            "tensorpack's own scaling of TRAIN.BASE_LR (stated for a batch of 8) to that batch",
            f"proposals: per FPN level, RPN.TRAIN_PER_LEVEL_NMS_TOPK={cfg.model.rpn.pre_nms_topk_train} kept "
            "after NMS "
            f"in each level ('Level' mode); no top {cfg.model.rpn.post_nms_topk_train} over the levels",
            f"input.horizontal_flip_prob={cfg.input.horizontal_flip_prob}: tensorpack flips with probability "
            "0.5"
            if cfg.input.horizontal_flip_prob != 0.5
            else "",
            f"model.backbone.freeze_at={cfg.model.backbone.freeze_at}: tensorpack freezes at most 2 stages"
            if cfg.model.backbone.freeze_at > 2
            else "",
            "the RoIAlign is crop_and_resize on a 2x-sampled grid (tensorpack's own), not the canonical "
            "sampling",
            "pixel mean and std: tensorpack's own (ImageNet's in RGB), from BACKBONE's defaults",
            f"timed by epoch: TRAIN.STEPS_PER_EPOCH={STEPS_PER_EPOCH}, so the window's ends fall on epochs",
        ]
        command = shell(
            "python3", "train.py", "--logdir", "/tmp/tensorpack", "--config", *self.overrides(cfg)
        )
        return Translation(
            {"tensorpack-overrides.txt": "\n".join(self.overrides(cfg)) + "\n"},
            command,
            [n for n in notes if n],
        )


SYSTEM = Tensorpack(
    "tensorpack",
    "tensorpack (TensorFlow 1)",
    "https://github.com/tensorpack/tensorpack/tree/master/examples/FasterRCNN",
    log_format="tensorpack",
    workdir="/tensorpack/examples/FasterRCNN",
)
