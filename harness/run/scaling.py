"""How a config's batch is spread over N processes: strong scaling (the default) or weak scaling.

- **Strong**: the global batch stays the config's ``solver.ims_per_batch`` (16 for the canonical config)
  and is split over the N processes. A process whose share exceeds ``benchmark.max_ims_per_step``
  (the images one forward/backward may hold) accumulates gradients over several steps.
- **Weak** (``--ims-per-gpu K``): each process keeps K images, the global batch is K x N and the
  learning rate is scaled linearly with it (Goyal et al.); the warm-up and the steps stay canonical.

NVIDIA's Mask R-CNN tables report both; detectron2's and mmdetection's configs scale the batch with the
GPUs (weak) and leave the learning rate to the user.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass


class ScalingError(ValueError):
    """The batch cannot be spread as asked; ``command`` is a command line that can."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message + (f"\nThis would run:\n  {command}" if command else ""))
        self.command = command


@dataclass(frozen=True)
class Plan:
    mode: str  # "strong" or "weak"
    world: int
    global_batch: int
    ims_per_step: int  # per process, per forward/backward
    grad_accum: int
    base_lr: float

    def overrides(self) -> dict:
        return {
            "benchmark.gpus": self.world,
            "benchmark.scaling": self.mode,
            "benchmark.grad_accum": self.grad_accum,
            "solver.ims_per_batch": self.global_batch,
            "solver.base_lr": self.base_lr,
        }

    def describe(self) -> str:
        accum = f" x {self.grad_accum} accumulated steps" if self.grad_accum > 1 else ""
        return (
            f"{self.mode} scaling: {self.world} process(es), global batch {self.global_batch} "
            f"({self.ims_per_step} image(s) per process per step{accum}), base_lr {self.base_lr:g}"
        )


def _accumulation(share: int, max_per_step: int | None) -> int:
    """The fewest accumulation steps that divide ``share`` with at most ``max_per_step`` images each."""
    if not max_per_step or share <= max_per_step:
        return 1
    return next(a for a in range(math.ceil(share / max_per_step), share + 1) if share % a == 0)


def _command_with(extra: list[str]) -> str:
    """This command line as typed, with ``extra`` arguments added (``--ims-per-gpu`` replaced)."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--ims-per-gpu":
            skip = True
            continue
        if a.startswith("--ims-per-gpu="):
            continue
        args.append(a)
    return shlex.join(["mrcnn-bench", *args, *extra])


def plan(cfg, world: int, ims_per_gpu: int | None = None, grad_accum: int | None = None) -> Plan:
    """The batch of ``cfg`` over ``world`` processes: weak scaling when ``ims_per_gpu`` is given, else
    strong. ``grad_accum`` (an explicit ``benchmark.grad_accum``) overrides the automatic choice."""
    b = cfg.solver.ims_per_batch
    cap = cfg.benchmark.max_ims_per_step
    if ims_per_gpu is not None:
        total = ims_per_gpu * world
        accum = grad_accum or _accumulation(ims_per_gpu, cap)
        if ims_per_gpu % accum:
            raise ScalingError(
                f"--ims-per-gpu {ims_per_gpu} is not divisible by benchmark.grad_accum={accum}"
            )
        return Plan("weak", world, total, ims_per_gpu // accum, accum, cfg.solver.base_lr * total / b)
    if b % world:
        k = max(1, b // world)
        raise ScalingError(
            f"{cfg.name}: its global batch solver.ims_per_batch={b} cannot be split evenly over {world} "
            "processes "
            "(strong scaling keeps it). Weak scaling gives each process its own images and scales the "
            "learning rate "
            f"with the global batch ({k} x {world} = {k * world} images, base_lr "
            f"{cfg.solver.base_lr * k * world / b:g}).",
            _command_with(["--ims-per-gpu", str(k)]),
        )
    share = b // world
    accum = grad_accum or _accumulation(share, cap)
    if share % accum:
        raise ScalingError(
            f"{cfg.name}: {share} image(s) per process is not divisible by benchmark.grad_accum={accum}"
        )
    return Plan("strong", world, b, share // accum, accum, cfg.solver.base_lr)
