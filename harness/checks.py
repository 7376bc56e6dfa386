"""What `mrcnn-bench parity` checks, in its three modes: the effective hyperparameters side by side
(static), one batch through every implementation (``--check-forward``), and what the implementations
of one run did (``--run``). Each returns (Markdown text, whether it found nothing wrong); input that
cannot be checked is a ``suite.RequestError``."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .config import load_config, resolve_config_path
from .suite import RequestError, each_installed, say, shared_weights
from .tasks import task_of


def static_parity(config_name: str, impl: str, data_root: str | None, interpreters: dict) -> tuple[str, bool]:
    """The canonical values and each installed implementation's effective ones, ✗ where they differ."""
    from .parity import canonical_values, effective_for, parity_frame

    cfg = load_config(resolve_config_path(config_name))
    effective, failed = each_installed(impl, interpreters, lambda name, python: effective_for(name, python, cfg, data_root))
    from .data import DataPaths, num_classes

    # the classes every adapter builds: model.num_classes, else the data set's, else COCO's 80
    paths = DataPaths.from_root(data_root, cfg.data.train_split, cfg.data.val_split) if data_root else None
    table, notes = parity_frame(canonical_values(cfg, num_classes(cfg, paths)), effective)
    parts = [table.to_markdown(index=False, disable_numparse=True)]
    if "reference" in effective:  # its levers: the same model and work, so settings rather than divergences
        parts.append("\nThe reference's speed settings (the same arithmetic and work; README, \"Levers\"): "
                     + ", ".join(f"reference.{k}={v}" for k, v in cfg.reference.model_dump().items()))
    if notes:
        parts.append("\nDivergences (✗):\n" + "\n".join(f"- {note}" for note in notes))
    return "\n".join(parts), not failed and not any(n.endswith("UNEXPLAINED") for n in notes)


def forward_parity(config_name: str, impl: str, data_root: str | None, interpreters: dict) -> tuple[str, bool]:
    """One batch of the run's data order through each implementation from the shared initial weights:
    FPN features and RPN head outputs against the first one's."""
    import torch

    from .data import resolve_data
    from .parity import FORWARD_RTOL, check_images, forward_for, forward_frame

    cfg = load_config(resolve_config_path(config_name))
    paths, _ = resolve_data(cfg.data, data_root)
    cfg = shared_weights(cfg, paths)
    images = check_images(cfg, paths.train_json, paths.train_images)
    with tempfile.TemporaryDirectory(prefix="mrcnn-bench-forward-") as tmp:
        torch.save(images, Path(tmp) / "images.pt")

        def forward(name, python):
            say(f"{name}: forward on {tuple(images.shape)} ...")
            return forward_for(name, python, cfg, Path(tmp) / "images.pt", Path(tmp) / f"{name}.pt")

        outputs, failed = each_installed(impl, interpreters, forward)
    if not outputs:
        raise RequestError("no implementation could run the forward check")
    table, problems = forward_frame(outputs)
    base = next(iter(outputs))
    text = (f"one batch of {images.shape[0]} images ({'x'.join(map(str, images.shape[-2:]))} padded) from the run's data "
            f"order, the shared initial weights, training mode: each implementation's FPN features and RPN head outputs, "
            f"as max |difference from {base}| / max |{base}| (tolerance {FORWARD_RTOL:g})\n\n"
            + table.to_markdown(index=False, disable_numparse=True) + "".join(f"\n- {p}" for p in problems))
    return text, not problems and not failed


def trajectory_parity(run_dir: str, band: float | None) -> tuple[str, bool]:
    """Each implementation of one run: its lr against the canonical schedule, its global batch, and its
    work per image over the timed window against the others'."""
    from .frames import load_runs
    from .parity import PIXELS_RTOL, POSITIVES_BAND, trajectory_frame

    records = load_runs([run_dir])
    if not records:
        raise RequestError(f"{run_dir}: no run.json under it (a folder made by mrcnn-bench run)")
    run_ids = sorted({r["run_id"] for r in records})
    if len(run_ids) > 1:
        raise RequestError(f"{run_dir}: holds runs {', '.join(run_ids)}; --run takes the folder of one run")
    if not any(task_of(_task(r)).trains for r in records):
        raise RequestError(f"{run_dir}: an inference run (--task {_task(records[0])}), which does not train; --run checks what "
                           "training runs did (the inference runs' own check is the detections per image beside their latency)")
    band = band or POSITIVES_BAND
    table, problems = trajectory_frame(records, band)
    text = (f"run {run_ids[0]}: lr against the canonical schedule (relative tolerance 1e-6), global batch, work per "
            f"image over the timed window (positives within ±{100 * band:.0f}% of the median, padded pixels within "
            f"±{100 * PIXELS_RTOL:.1f}% of the lower median)\n\n" + table.to_markdown(index=False, disable_numparse=True))
    if problems:
        return text + "\n\nDivergences:" + "".join(f"\n- {p}" for p in problems), False
    return text + "\n\nno divergence", True


def _task(record: dict) -> str:
    return ((record.get("config") or {}).get("benchmark") or {}).get("task", "train")

