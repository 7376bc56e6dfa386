"""mmengine's side of a benchmark run, as a hook class in the manner of mmengine's own hooks: it loads
the run's shared initial weights and stamps each optimizer step for the harness. Imported only when
mmdet trains (this module imports mmengine)."""

from __future__ import annotations

from mmengine.hooks import Hook

from ._common import load_exact


class HarnessTimer(Hook):
    """Stamps each optimizer step (every ``accum`` iterations of mmengine's) for the harness's
    IterationTimer, after the LR scheduler's update; loads ``init_weights`` (torchvision's layout)
    after mmengine's own init_weights() and load_or_resume(), before the first iteration."""

    def __init__(self, timer, images_per_step: int, accum: int, init_weights: str | None, convert):
        self.timer, self.images_per_step, self.accum = timer, images_per_step, accum
        self.init_weights, self.convert = init_weights, convert
        self.lr, self.data_time = None, 0.0

    def before_train(self, runner):
        if self.init_weights:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            load_exact(model, self.convert(self.init_weights), self.init_weights)
        self.timer.before_train()

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter % self.accum == 0:  # the lr of this optimizer step, before the scheduler moves it
            self.lr = runner.optim_wrapper.get_lr()["lr"][0]
            self.data_time = 0.0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        hub = runner.message_hub
        if "train/data_time" in hub.log_scalars:  # IterTimerHook's, for this micro-batch
            self.data_time += hub.get_scalar("train/data_time").current()
        if (runner.iter + 1) % self.accum:  # stamped when the optimizer stepped
            return
        loss = float(outputs["loss"].detach()) if outputs and "loss" in outputs else None
        self.timer.after_step(
            self.images_per_step, loss=loss, data_time=self.data_time, lr=self.lr, loss_parts=outputs
        )
