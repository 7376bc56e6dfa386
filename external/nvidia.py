"""NVIDIA's Mask R-CNN for PyTorch (NVIDIA/DeepLearningExamples, PyTorch/Segmentation/MaskRCNN): a
maskrcnn-benchmark descendant with AMP, NHWC and its own CUDA kernels, run in NGC's PyTorch container
(docker/external/nvidia.Dockerfile builds it)."""

from __future__ import annotations

from ._yacs import dump, maskrcnn_benchmark_yaml
from .base import ExternalSystem, Translation, shell


class NvidiaMaskRCNN(ExternalSystem):
    def translate(self, cfg) -> Translation:
        native, notes = maskrcnn_benchmark_yaml(cfg, per_image_post_nms_key=False)
        # the fork's own keys: input precision (AMP with float16) and NHWC convolutions, no checkpoint or eval
        native.update(
            {
                "DTYPE": "float16" if cfg.benchmark.dtype == "fp16" else "float32",
                "NHWC": bool(cfg.benchmark.channels_last),
                "SAVE_CHECKPOINT": False,
                "PER_EPOCH_EVAL": False,
                "PATHS_CATALOG": "/mrcnn-bench/paths_catalog.py",
            }
        )
        if cfg.benchmark.dtype == "bf16":
            notes.append(
                "benchmark.dtype=bf16: NVIDIA's implementation has float16 and float32 only (float32 written)"
            )
        from .maskrcnn_benchmark import PATHS_CATALOG

        command = shell(
            "python",
            "-m",
            "torch.distributed.launch",
            f"--nproc_per_node={cfg.benchmark.gpus}",
            "tools/train_net.py",
            "--config-file",
            "/mrcnn-bench/nvidia.yaml",
            "--skip-test",
            "OUTPUT_DIR",
            "/tmp/nvidia-maskrcnn",
        )
        return Translation({"nvidia.yaml": dump(native), "paths_catalog.py": PATHS_CATALOG}, command, notes)


SYSTEM = NvidiaMaskRCNN(
    "nvidia",
    "NVIDIA Mask R-CNN (DeepLearningExamples)",
    "https://github.com/NVIDIA/DeepLearningExamples/tree/master/PyTorch/Segmentation/MaskRCNN",
    log_format="maskrcnn-benchmark",
    workdir="/workspace/object_detection",
    image="mrcnn-bench/nvidia-maskrcnn",  # built by docker/external/nvidia.Dockerfile
)
