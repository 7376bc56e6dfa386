"""detectron2's side of a benchmark run, as classes in the manner of its own engine/hooks.py: the hook
that stamps each iteration for the harness, and the trainer that reads the run's data order. Imported
only when detectron2 trains (this module imports detectron2)."""

from __future__ import annotations

from detectron2.engine import DefaultTrainer, HookBase, hooks

from ._common import ordered_batches
from .base import DistInfo


class HarnessTimer(HookBase):
    """Stamps each iteration for the harness's IterationTimer, after the optimizer and LR-scheduler
    steps, with the loss, the data time and the lr from the trainer's event storage."""

    def __init__(self, timer, images_per_step: int):
        self.timer, self.images_per_step = timer, images_per_step

    def before_train(self):
        self.timer.before_train()

    def after_step(self):
        storage = self.trainer.storage

        def latest(name):
            return storage.history(name).latest() if name in storage.histories() else None

        self.timer.after_step(
            self.images_per_step, loss=latest("total_loss"), data_time=latest("data_time"), lr=latest("lr")
        )


class OrderedTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer over its own dataset dicts and loader, sampled in the run's data
    order, with a HarnessTimer right after the LR scheduler's hook."""

    def __init__(self, cfg, timer, images_per_step: int):
        self._harness_timer = HarnessTimer(timer, images_per_step)
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, with the RPN's low-quality rule as the canonical config asks
        (``RPN.from_config`` builds its matcher with it on)."""
        model = super().build_model(cfg)
        model.proposal_generator.anchor_matcher.allow_low_quality_matches = bool(
            cfg.MRCNN_BENCH.RPN_LOW_QUALITY_MATCHES
        )
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
        from detectron2.utils import comm

        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        order = dict(train_json=cfg.MRCNN_BENCH.TRAIN_JSON, order=dict(cfg.MRCNN_BENCH.ORDER))
        dist = DistInfo(rank=comm.get_rank(), world_size=comm.get_world_size())
        sampler = ordered_batches(
            order,
            dist,
            [d["image_id"] for d in dicts],
            f"detectron2 ({cfg.MRCNN_BENCH.TRAIN_JSON})",
            flat=True,
        )
        return build_detection_train_loader(cfg, dataset=dicts, sampler=sampler)

    def build_hooks(self):
        hook_list = super().build_hooks()
        at = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.LRScheduler)) + 1
        hook_list.insert(at, self._harness_timer)
        return hook_list
