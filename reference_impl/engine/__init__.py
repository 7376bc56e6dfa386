from .trainer import Trainer, build_optimizer, warmup_multistep

__all__ = ["Trainer", "build_optimizer", "warmup_multistep"]
