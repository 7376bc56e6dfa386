"""The reference implementation's training loop: AMP, channels-last, gradient accumulation, DDP,
checkpoints that a run can resume from."""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..syncs import to_host


def build_optimizer(
    model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float, weight_decay_norm: float
):
    """SGD; normalization layers' parameters get ``weight_decay_norm``."""
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    decay, no_decay = [], []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        (no_decay if isinstance(module, norm_types) else decay).extend(own)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": weight_decay_norm},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum)


def warmup_multistep(
    *, warmup_iters: int, warmup_factor: float, steps: list[int], gamma: float
) -> Callable[[int], float]:
    """The learning-rate factor of iteration ``it``: linear warm-up, then x gamma at each step."""

    def factor(it: int) -> float:
        warm = 1.0
        if it < warmup_iters:
            alpha = it / warmup_iters
            warm = warmup_factor * (1 - alpha) + alpha
        return warm * gamma ** bisect.bisect_right(steps, it)

    return factor


def to_device(images: list, targets: list[dict], device) -> tuple[list, list[dict]]:
    """A batch from the loader on ``device``: the images, and each target's tensors (other values as they
    are)."""
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


class Trainer:
    """Runs iterations of (forward, backward, optimizer step); ``after_step(images, loss, data_time,
    lr)`` is called after each step (the harness timer hooks in there)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        data_loader,
        *,
        device: torch.device,
        dtype: str = "fp32",
        grad_accum: int = 1,
        ddp: bool = False,
        after_step: Callable | None = None,
        autocast_cache: bool = True,
    ):
        self.model = model
        self.ddp_model = model
        if ddp:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        self.optimizer, self.scheduler, self.data_loader = optimizer, scheduler, data_loader
        self.device, self.grad_accum, self.ddp = device, grad_accum, ddp
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
        self.autocast_cache = (
            autocast_cache  # CUDA graphs need it off (make_graphed_callables refuses the cache)
        )
        self.after_step = after_step
        self.iter = 0
        self._data_iter = None

    def next_batch(self):
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return to_device(*next(self._data_iter), self.device)

    def step(self) -> float:
        self.model.train()
        data_time, images_seen = 0.0, 0
        for micro in range(self.grad_accum):
            t0 = time.perf_counter()
            images, targets = self.next_batch()
            data_time += time.perf_counter() - t0
            last = micro == self.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not self.ddp) else self.ddp_model.no_sync()
            with sync:
                with torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype,
                    enabled=self.autocast_dtype is not None,
                    cache_enabled=self.autocast_cache,
                ):
                    losses = self.ddp_model(images, targets)
                    loss = sum(losses.values())
                self.scaler.scale(loss / self.grad_accum).backward()
            images_seen += len(images)
        # the step's one read of device values by the host: the loss and its parts, together
        loss_value, *parts = to_host(
            torch.stack([loss.detach(), *(v.detach() for v in losses.values())]).float()
        )
        self.last_losses = dict(zip(losses, parts))
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss became {loss_value} at iteration {self.iter}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in self.last_losses.items())
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.iter += 1
        if self.after_step is not None:
            self.after_step(images_seen, loss=loss_value, data_time=data_time, lr=lr)
        return loss_value

    def train(
        self, max_iter: int, checkpoint_path: str | Path | None = None, checkpoint_period: int = 0
    ) -> None:
        while self.iter < max_iter:
            self.step()
            if checkpoint_path and checkpoint_period and self.iter % checkpoint_period == 0:
                self.save(checkpoint_path)
        if checkpoint_path:
            self.save(checkpoint_path)

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iter": self.iter,
            "rng": torch.get_rng_state(),
        }

    def save(self, path: str | Path) -> None:
        """Written atomically: a crash mid-save leaves the previous checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def resume(self, path: str | Path) -> int:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iter"])
        torch.set_rng_state(state["rng"])
        return self.iter
