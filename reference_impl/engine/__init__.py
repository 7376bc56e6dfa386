from .evaluate import coco_map, export_predictions, predict
from .trainer import Trainer, build_optimizer, warmup_multistep

__all__ = ["Trainer", "build_optimizer", "warmup_multistep", "predict", "export_predictions", "coco_map"]
