"""The short shared training before an inference run: one set of trained weights for every implementation.

With initial weights, how many detections pass the test score threshold is an accident of the
initialisation: none (then the mask head and the pasting never run: an empty path) up to the cap of
100 per image from random logits (the seeded initialisation here gives the cap), while a trained model
keeps what the images hold, and its eval path does that work: boxes, masks, pasting. So before
``--task infer`` (``benchmark.shared_training_iters`` > 0) torchvision's model, built by its adapter
from the run's config and the shared initialisation, trains for that many iterations through the
adapter's own loop (the config's solver, the run's data order), once per config and cached. Its
state dict is in torchvision's layout, which every adapter converts from: it becomes the run's
``model.init_weights``. torchvision does it, not the reference: the weights every implementation is
timed with come from a peer's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .init_weights import default_cache_dir, file_stamp


def _key(cfg) -> str:
    """What the trained weights depend on: the model and its initial weights' file, input, solver, the
    data, the seed and the iterations (not the inference settings)."""
    bench = cfg.benchmark
    text = json.dumps(
        {
            "model": cfg.model.model_dump(mode="json", exclude={"init_weights"}),
            "init": file_stamp(cfg.model.init_weights),
            "input": cfg.input.model_dump(mode="json"),
            "solver": cfg.solver.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"),
            "seed": bench.seed,
            "iters": bench.shared_training_iters,
            "device": bench.device,
            "dtype": bench.dtype,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_config(cfg):
    """``cfg`` as the shared training runs it: ``shared_training_iters`` iterations of the train task on
    one process, the whole run timed (its times are not results)."""
    n = cfg.benchmark.shared_training_iters
    return cfg.with_overrides(
        {
            "benchmark.task": "train",
            "benchmark.iters": n,
            "benchmark.warmup": 0,
            "benchmark.window_end": n,
            "benchmark.gpus": 1,
            "benchmark.grad_accum": 1,
            "solver.ims_per_batch": cfg.ims_per_process_step,
        },
        source="shared training",
    )


def trained_weights(cfg, paths, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of the weights after the shared training for ``cfg`` on ``paths``, trained now unless
    cached (written atomically)."""
    import torch
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.adapters.base import DistInfo

    from ..engine.timing import IterationTimer, TimerListener

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    n = cfg.benchmark.shared_training_iters
    path = cache / f"mask_rcnn_R_50_FPN-trained{n}-torchvision-{_key(cfg)}.pth"
    if path.is_file():
        return path
    train_cfg = training_config(cfg)
    adapter = get_adapter("torchvision")
    every = max(1, n // 10)

    class Progress(TimerListener):
        def after_step(self, rec):
            if (rec.iter + 1) % every == 0 or rec.iter + 1 == n:
                print(
                    f"shared training: iteration {rec.iter + 1}/{n}, loss {rec.loss:.3f}",
                    file=sys.stderr,
                    flush=True,
                )

    device = "cuda:0" if cfg.benchmark.device == "cuda" else "cpu"
    timer = IterationTimer.for_device(n, device, listeners=[Progress()])
    try:
        adapter.train(train_cfg, paths, timer, DistInfo(device=device))
    finally:
        timer.after_train()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in adapter.trained_model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def with_shared_training(cfg, paths, cache_dir: str | os.PathLike | None = None) -> tuple[object, str | None]:
    """(``cfg`` with ``model.init_weights`` naming the weights after the shared training, a line saying
    so) for an inference run with ``benchmark.shared_training_iters``; else (``cfg``, None)."""
    from ..tasks import task_of

    bench = cfg.benchmark
    if (
        task_of(bench.task).trains or not bench.shared_training_iters
    ):  # a task that trains starts from the initialisation
        return cfg, None
    path = trained_weights(cfg, paths, cache_dir)
    message = (
        f"shared training: torchvision's model, {bench.shared_training_iters} iterations from the shared "
        f"initialisation; every implementation loads {path}"
    )
    return cfg.with_overrides({"model.init_weights": str(path)}, source="shared training"), message
