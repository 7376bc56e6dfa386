from .coco import COCOInstances, InfiniteSampler, build_train_loader, collate

__all__ = ["COCOInstances", "InfiniteSampler", "build_train_loader", "collate"]
