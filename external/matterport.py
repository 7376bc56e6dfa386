"""matterport's Mask_RCNN (matterport/Mask_RCNN): Keras 2 on TensorFlow 1. Its configuration is a
subclass of ``mrcnn.config.Config``; the file written here is that subclass and a training script."""

from __future__ import annotations

from .base import ExternalSystem, Translation, common_mismatches, gpus_and_batch, shell

STEPS_PER_EPOCH = 100  # Keras logs time per epoch: epochs end on the window's boundaries


class Matterport(ExternalSystem):
    def attributes(self, cfg) -> dict[str, object]:
        m, rpn, roi, inp, sol = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.solver
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        # Keras pads every image to a square of IMAGE_MAX_DIM (a multiple of 64)
        side = -(-inp.max_size_train // 64) * 64
        return {
            "NAME": "mrcnn_bench",
            "GPU_COUNT": gpus,
            "IMAGES_PER_GPU": per_gpu,
            "NUM_CLASSES": (m.num_classes or 80) + 1,
            "STEPS_PER_EPOCH": STEPS_PER_EPOCH,
            "VALIDATION_STEPS": 1,
            "BACKBONE": "resnet50",
            "BACKBONE_STRIDES": [4, 8, 16, 32, 64],
            "TOP_DOWN_PYRAMID_SIZE": m.fpn_out_channels,
            "FPN_CLASSIF_FC_LAYERS_SIZE": roi.box_head_fc_dim,
            "RPN_ANCHOR_SCALES": tuple(m.anchors.sizes),
            "RPN_ANCHOR_RATIOS": list(m.anchors.aspect_ratios),
            "RPN_NMS_THRESHOLD": rpn.nms_thresh,
            "RPN_TRAIN_ANCHORS_PER_IMAGE": rpn.batch_size_per_image,
            "PRE_NMS_LIMIT": rpn.pre_nms_topk_train,
            "POST_NMS_ROIS_TRAINING": rpn.post_nms_topk_train,
            "POST_NMS_ROIS_INFERENCE": rpn.post_nms_topk_test,
            "USE_MINI_MASK": False,
            "IMAGE_RESIZE_MODE": "square",
            "IMAGE_MIN_DIM": min(inp.min_size_train),
            "IMAGE_MAX_DIM": side,
            "MEAN_PIXEL": list(m.pixel_mean),
            "TRAIN_ROIS_PER_IMAGE": roi.batch_size_per_image,
            "ROI_POSITIVE_RATIO": roi.positive_fraction,
            "POOL_SIZE": roi.box_pooler_resolution,
            "MASK_POOL_SIZE": roi.mask_pooler_resolution,
            "MASK_SHAPE": [2 * roi.mask_pooler_resolution] * 2,
            "MAX_GT_INSTANCES": 100,
            "DETECTION_MAX_INSTANCES": roi.detections_per_image,
            "DETECTION_MIN_CONFIDENCE": roi.score_thresh_test,
            "DETECTION_NMS_THRESHOLD": roi.nms_thresh_test,
            "LEARNING_RATE": sol.base_lr,
            "LEARNING_MOMENTUM": sol.momentum,
            "WEIGHT_DECAY": sol.weight_decay,
            "TRAIN_BN": False,
        }

    def translate(self, cfg) -> Translation:
        gpus, batch, per_gpu = gpus_and_batch(cfg)
        attrs = self.attributes(cfg)
        body = "\n".join(f"    {k} = {v!r}" for k, v in attrs.items())
        epochs = -(-cfg.benchmark.iters // STEPS_PER_EPOCH)
        script = SCRIPT.format(body=body, epochs=epochs, lr=cfg.solver.base_lr)
        notes = common_mismatches(cfg) + [
            f"images resized and padded to a {attrs['IMAGE_MAX_DIM']} x {attrs['IMAGE_MAX_DIM']} square "
            f"(IMAGE_RESIZE_MODE 'square'), not {min(cfg.input.min_size_train)}/{cfg.input.max_size_train} "
            "with padding to the batch's largest image",
            f"model.pixel_std={cfg.model.pixel_std}: matterport subtracts MEAN_PIXEL only",
            f"no warm-up and no steps: the learning rate is {cfg.solver.base_lr} throughout "
            f"(solver.warmup_iters={cfg.solver.warmup_iters} asked for)",
            "gradients are clipped (GRADIENT_CLIP_NORM 5.0, matterport's default)",
            "the RoIAlign is TensorFlow's crop_and_resize (not the canonical sampling or alignment)",
            "loss weights and the box regression loss are matterport's own (smooth L1, beta 1)",
            "the backbone is Keras' ResNet-50 (caffe style, stride in the 1x1 convolution)",
            f"horizontal flips: matterport's augmentation is off by default (input.horizontal_flip_prob="
            f"{cfg.input.horizontal_flip_prob} asked for)"
            if cfg.input.horizontal_flip_prob
            else "",
            f"timed by epoch: STEPS_PER_EPOCH={STEPS_PER_EPOCH}, {epochs} epochs",
        ]
        return Translation(
            {"mrcnn_bench_matterport.py": script},
            shell("python3", "/mrcnn-bench/mrcnn_bench_matterport.py"),
            [n for n in notes if n],
        )


SCRIPT = '''"""Written by mrcnn-bench: matterport's Mask_RCNN with the canonical values, trained on COCO
2017 at /data/coco for {epochs} epochs (the Keras log times each epoch)."""
import sys

sys.path.insert(0, "/Mask_RCNN")
sys.path.insert(0, "/Mask_RCNN/samples/coco")
from mrcnn.config import Config  # noqa: E402
import mrcnn.model as modellib  # noqa: E402
import coco  # noqa: E402  (matterport's samples/coco/coco.py)


class MrcnnBenchConfig(Config):
{body}


if __name__ == "__main__":
    config = MrcnnBenchConfig()
    config.display()
    train = coco.CocoDataset()
    train.load_coco("/data/coco", "train", year="2017")
    train.prepare()
    val = coco.CocoDataset()
    val.load_coco("/data/coco", "val", year="2017")
    val.prepare()
    model = modellib.MaskRCNN(mode="training", config=config, model_dir="/tmp/matterport")
    model.train(train, val, learning_rate={lr}, epochs={epochs}, layers="all")
'''

SYSTEM = Matterport(
    "matterport",
    "matterport Mask_RCNN (Keras)",
    "https://github.com/matterport/Mask_RCNN",
    log_format="keras",
    workdir="/Mask_RCNN",
)
