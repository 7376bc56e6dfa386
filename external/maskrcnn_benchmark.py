"""maskrcnn-benchmark (facebookresearch/maskrcnn-benchmark): PyTorch 1.x with its own CUDA ops."""

from __future__ import annotations

from ._yacs import dump, maskrcnn_benchmark_yaml
from .base import ExternalSystem, Translation, shell


class MaskrcnnBenchmark(ExternalSystem):
    def translate(self, cfg) -> Translation:
        native, notes = maskrcnn_benchmark_yaml(cfg, per_image_post_nms_key=True)
        native["PATHS_CATALOG"] = "/mrcnn-bench/paths_catalog.py"
        command = shell(
            "python",
            "-m",
            "torch.distributed.launch",
            f"--nproc_per_node={cfg.benchmark.gpus}",
            "tools/train_net.py",
            "--config-file",
            "/mrcnn-bench/maskrcnn_benchmark.yaml",
            "--skip-test",
            "OUTPUT_DIR",
            "/tmp/maskrcnn-benchmark",
        )
        return Translation(
            {"maskrcnn_benchmark.yaml": dump(native), "paths_catalog.py": PATHS_CATALOG}, command, notes
        )


# COCO 2017 at /data/coco (the container's mount), in maskrcnn-benchmark's catalog shape
PATHS_CATALOG = '''"""written by mrcnn-bench: COCO 2017 at /data/coco"""
import os


class DatasetCatalog(object):
    DATASETS = {
        "coco_2017_train": {
            "img_dir": "/data/coco/train2017",
            "ann_file": "/data/coco/annotations/instances_train2017.json",
        },
        "coco_2017_val": {
            "img_dir": "/data/coco/val2017",
            "ann_file": "/data/coco/annotations/instances_val2017.json",
        },
    }

    @staticmethod
    def get(name):
        attrs = DatasetCatalog.DATASETS[name]
        return dict(factory="COCODataset", args=dict(root=attrs["img_dir"], ann_file=attrs["ann_file"]))


class ModelCatalog(object):
    @staticmethod
    def get(name):
        raise RuntimeError("mrcnn-bench: give MODEL.WEIGHT as a path (model.weights)")
'''

SYSTEM = MaskrcnnBenchmark(
    "maskrcnn-benchmark",
    "maskrcnn-benchmark",
    "https://github.com/facebookresearch/maskrcnn-benchmark",
    log_format="maskrcnn-benchmark",
    workdir="/maskrcnn-benchmark",
)
