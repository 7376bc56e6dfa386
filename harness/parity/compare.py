"""Parity: do the implementations do the same work?

The static table: every implementation's effective hyperparameters beside the canonical value.
Effective values are read back out of each framework's native config (and its scheduler, probed),
in that framework's own interpreter (``harness.parity.probe``); the canonical column comes from the config.
A cell that differs from the canonical value is marked, and the framework's own note (why it cannot
be set) is listed.

The trajectory check (:func:`trajectory_frame`): what each implementation of one run actually did,
from its ``iterations.jsonl``: the learning rate of every iteration against the canonical schedule,
the global batch of every iteration, and the work per image over the timed window (positive RoIs
through the mask head, padded input pixels into the backbone) against the other implementations'.
"""

from __future__ import annotations

import bisect
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from ..config.schema import flatten


def canonical_values(cfg, num_classes: int | None = None) -> dict:
    """The canonical config in the keys adapters report, with derived keys resolved."""
    flat = flatten(cfg.to_dict())
    flat["model.backbone.norm"] = cfg.model.effective_norm
    flat["model.backbone.freeze_at"] = cfg.model.effective_freeze_at
    flat["model.num_classes"] = cfg.model.num_classes or num_classes
    flat["model.rpn.post_nms_topk_scope"] = "per image"
    flat["solver.ims_per_batch_per_process"] = cfg.ims_per_process_step
    return flat


def check_divergences(cfg, impls: list[str]) -> dict[str, dict[str, str]]:
    """Each implementation's divergences from ``cfg`` (the canonical keys it cannot run as asked ->
    what it does instead), from its adapter without importing the framework. A divergence whose key is
    not in ``benchmark.allow_divergent`` is a ConfigError (exit 2) naming the key, the framework and
    what it supports; so is an allowed key that is not a canonical key."""
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.adapters.base import CANONICAL_HPARAM_KEYS

    from ..config.schema import ConfigError

    allowed = set(cfg.benchmark.allow_divergent)
    unknown = sorted(allowed - set(CANONICAL_HPARAM_KEYS))
    if unknown:
        raise ConfigError(
            f"--allow-divergent / benchmark.allow_divergent: unknown key(s) {', '.join(unknown)}; "
            f"expected canonical keys such as model.rpn.low_quality_min_iou"
        )
    found = {impl: get_adapter(impl).divergences(cfg) for impl in impls}
    refused = [
        (impl, key, why)
        for impl, divergences in found.items()
        for key, why in divergences.items()
        if key not in allowed
    ]
    if refused:
        canonical = canonical_values(cfg)
        keys = sorted({key for _, key, _ in refused})
        raise ConfigError(
            "the implementations would not do the same work:\n"
            + "\n".join(
                f"  {key} = {_show(canonical.get(key))}: {impl} cannot run it: {why}"
                for impl, key, why in refused
            )
            + "\nchange the config, leave those implementations out, or run them anyway with "
            + " ".join(f"--allow-divergent {k}" for k in keys)
            + " (recorded in run.json and marked ✗ in the report)"
        )
    return found


def _ask(impl: str, python: str, question: str, cfg, *args: str, failed: str, timeout: float) -> str:
    """``python -m mrcnn_bench.harness.parity.probe QUESTION IMPL CONFIG_JSON ARGS...`` in ``impl``'s own
    interpreter; its stdout, or a RuntimeError with its last line of stderr."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg.to_dict(), f)
        path = f.name
    try:
        cmd = [python, "-m", "mrcnn_bench.harness.parity.probe", question, impl, path, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        Path(path).unlink(missing_ok=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"{impl}: {failed} failed: {lines[-1]}")
    return out.stdout


def effective_for(impl: str, python: str, cfg, data_root: str | None) -> dict:
    out = _ask(
        impl,
        python,
        "effective",
        cfg,
        *([str(data_root)] if data_root else []),
        failed="reading effective hyperparameters",
        timeout=600,
    )
    return json.loads(out.strip().splitlines()[-1])["effective"]


def _same(a, b) -> bool:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)), abs(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def parity_frame(canonical: dict, effective: dict[str, dict]) -> tuple[pd.DataFrame, list[str]]:
    """(table, notes): rows are keys every implementation reports; a cell 'value ✗' differs."""
    keys = sorted({k for eff in effective.values() for k in eff if not k.startswith("_")})
    rows, notes = [], []
    for key in keys:
        row = {"key": key, "canonical": _show(canonical.get(key, "-"))}
        for impl, eff in effective.items():
            if key not in eff:
                row[impl] = "n/a"
                continue
            value = eff[key]
            differs = key in canonical and not _same(value, canonical[key])
            row[impl] = _show(value) + (" ✗" if differs else "")
            if differs:
                why = eff.get("_notes", {}).get(key, "UNEXPLAINED")
                notes.append(f"{impl}: {key} = {_show(value)} (canonical {_show(canonical[key])}): {why}")
        rows.append(row)
    return pd.DataFrame(rows), notes


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


# ------------------------------------------------------------------------------ trajectory parity
#: relative tolerance of a recorded learning rate against the canonical schedule
LR_RTOL = 1e-6
#: how far an implementation's positives per image over the window may lie from the implementations'
#: median before the run is called divergent (same weights and data order make them close; the
#: frameworks' own divergences, listed in the static table, keep them from being equal)
POSITIVES_BAND = 0.25
#: how far padded input pixels per image over the window may lie from the implementations' lower median:
#: the same images at the same sizes pad alike, but a resize that rounds the scaled side where another
#: floors it (detectron2 and mmdet against torchvision and the reference) pads an image whose floored
#: side is a multiple of 32 to the next one
PIXELS_RTOL = 0.005


def canonical_lr(solver: dict, it: int) -> float:
    """The canonical learning rate of optimizer step ``it``: linear warm-up from ``warmup_factor``
    over ``warmup_iters``, then x ``gamma`` at each of ``steps`` (the config's solver section)."""
    warm = 1.0
    if it < solver["warmup_iters"]:
        alpha = it / solver["warmup_iters"]
        warm = solver["warmup_factor"] * (1 - alpha) + alpha
    return solver["base_lr"] * warm * solver["gamma"] ** bisect.bisect_right(solver["steps"], it)


def _lr_divergence(rows: list[dict], solver: dict) -> tuple[float | None, str | None]:
    """(largest relative lr error, the first divergent iteration described) over ``rows``."""
    worst, first = 0.0, None
    for r in rows:
        if r.get("lr") is None:
            return None, f"iteration {r['iter']} has no lr"
        want = canonical_lr(solver, r["iter"])
        err = abs(r["lr"] - want) / want
        worst = max(worst, err)
        if err > LR_RTOL and first is None:
            first = f"lr {r['lr']:.6g} at iteration {r['iter']}, canonical {want:.6g}"
    return worst, first


def _schedule(rows: list[dict], cfg: dict) -> tuple[float | None, str | None, int] | str:
    """(largest relative lr error, the first divergence, the global batch) of a run against its config's
    solver, or why that solver cannot be read (a record written by another version, or edited)."""
    solver = cfg.get("solver")
    if not isinstance(solver, dict):
        return "has no solver"
    try:
        return (*_lr_divergence(rows, solver), solver["ims_per_batch"])
    except (KeyError, TypeError, ValueError) as e:
        return f"has a solver that cannot be read ({type(e).__name__}: {e})"


def trajectory_frame(records: list[dict], band: float = POSITIVES_BAND) -> tuple[pd.DataFrame, list[str]]:
    """(table, divergences) for the implementations of one run; no divergence means the same schedule,
    the same global batch at every iteration, and positive RoIs and sampled positive anchors (the RPN's)
    per image within ``band`` of the median."""
    from ..engine.timing import work_per_image
    from ..records.frames import iterations_of

    rows, problems, pixels = [], [], {}
    banded = {"positives": {}, "rpn_positives": {}}  # counter -> impl -> per image over the window
    for rec in records:
        impl, cfg, w = rec["impl"], rec["config"], rec.get("window")
        its = iterations_of(rec) if rec["status"] == "ok" else []
        row = {"Implementation": impl, "Status": rec["status"]}
        if not its or not w:
            problems.append(
                f"{impl}: {rec['status']}"
                + (f": {rec.get('reason')}" if rec.get("reason") else "")
                + " (nothing to compare)"
            )
            rows.append(row)
            continue
        schedule = _schedule(its, cfg)
        if isinstance(schedule, str):
            problems.append(f"{impl}: its run.json's config {schedule} (nothing to compare)")
            rows.append(row)
            continue
        worst, first, batch = schedule
        row["lr: max relative error"] = "-" if worst is None else f"{worst:.1e}"
        if first:
            problems.append(f"{impl}: {first}")
        wrong = [r["iter"] for r in its if r.get("global_images", r["images"]) != batch]
        row["images/iter"] = (
            f"{batch} at every iteration" if not wrong else f"≠ {batch} at {len(wrong)} iterations"
        )
        if wrong:
            problems.append(f"{impl}: global batch is not {batch} at iteration(s) {wrong[:5]}")
        first = its[0]
        for key, label in (("rpn_positives", "RPN positives"), ("positives", "positives")):
            row[f"{label}/img at iteration 0"] = (
                "-" if first.get(key) is None else f"{first[key] / first['images']:.1f}"
            )
        work = work_per_image(its, w["warmup"], w["end"])
        for key in ("pixels", "proposals", "rois", "rpn_positives", "positives"):
            v = work[f"{key}_per_image"]
            row[f"{key.replace('_', ' ')}/img"] = "-" if v is None else f"{v:.1f}"
        if work["pixels_per_image"] is not None:
            pixels[impl] = work["pixels_per_image"]
        if work["positives_per_image"] is None:
            problems.append(
                f"{impl}: no work counters in its iterations.jsonl (recorded before they existed?)"
            )
        for key, per_impl in banded.items():
            if work[f"{key}_per_image"] is not None:
                per_impl[impl] = work[f"{key}_per_image"]
        rows.append(row)
    for key, per_impl in banded.items():
        problems += _against_median(rows, key.replace("_", " "), per_impl, band)
    if pixels:
        median = statistics.median_low(
            pixels.values()
        )  # one implementation's value: a tie of two groups names the larger
        for impl, p in pixels.items():
            off = p / median - 1
            if abs(off) > PIXELS_RTOL:
                problems.append(
                    f"{impl}: {p:.1f} padded pixels per image, {100 * off:+.1f}% from the lower median "
                    f"{median:.1f} "
                    f"(tolerance ±{100 * PIXELS_RTOL:.1f}%: the same images at the same sizes pad alike)"
                )
    return pd.DataFrame(rows), problems


def _against_median(rows: list[dict], label: str, per_impl: dict[str, float], band: float) -> list[str]:
    """Each implementation's distance from the median of ``per_impl`` into its row; the divergences past
    ``band``."""
    if not per_impl:
        return []
    problems = []
    median = float(pd.Series(per_impl).median())
    for row in rows:
        p = per_impl.get(row["Implementation"])
        if p is None:
            continue
        off = p / median - 1 if median else 0.0
        row[f"{label} vs median"] = f"{100 * off:+.1f}%"
        if abs(off) > band:
            problems.append(
                f"{row['Implementation']}: {p:.1f} {label} per image, {100 * off:+.1f}% from the median "
                f"{median:.1f} (band ±{100 * band:.0f}%)"
            )
    return problems


# ------------------------------------------------------------------------------- the same function
#: relative tolerance of the forward check: float32 through ResNet-50 + FPN, summed in other orders, and
#: with the reference's FrozenBN folded into its convolutions (the scaled weights round once more): up to
#: 1.1e-4 measured at cpu_small with calibrated statistics (0 between the reference unfolded and torchvision)
FORWARD_RTOL = 5e-4


def first_batch(cfg, train_json, image_dir) -> tuple[list[int], dict, list]:
    """The first batch of the run's data order (``cfg.ims_per_process_step`` images): (its image ids, the
    annotation file's contents, each image as float RGB [3, H, W] on the 0-255 scale, as stored)."""
    import numpy as np
    import torch
    from PIL import Image

    from ..data.order import global_batches

    ids = next(
        global_batches(
            train_json,
            batch=cfg.ims_per_process_step,
            seed=cfg.benchmark.seed,
            group_by_aspect=cfg.input.aspect_ratio_grouping,
        )
    )
    coco = json.loads(Path(train_json).read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    pixels = []
    for image_id in ids:
        with Image.open(Path(image_dir) / files[image_id]) as im:
            pixels.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float())
    return ids, coco, pixels


def check_images(cfg, train_json, image_dir):
    """The forward check's input: the first batch of the run's data order (``cfg.ims_per_process_step``
    images),
    resized here (short side ``min_size_train[0]``, long side at most ``max_size_train``, bilinear),
    normalised with the config's pixel statistics and padded with zeros to a multiple of 32."""
    import torch
    import torch.nn.functional as F

    _, _, pixels = first_batch(cfg, train_json, image_dir)
    mean = torch.tensor(cfg.model.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std).view(3, 1, 1)
    images = []
    for x in pixels:
        h, w = x.shape[-2:]
        scale = min(cfg.input.min_size_train[0] / min(h, w), cfg.input.max_size_train / max(h, w))
        size = (int(round(h * scale)), int(round(w * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        images.append((x - mean) / std)
    height = -(-max(x.shape[1] for x in images) // 32) * 32
    width = -(-max(x.shape[2] for x in images) // 32) * 32
    batch = torch.zeros(len(images), 3, height, width)
    for i, x in enumerate(images):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    return batch


def forward_for(impl: str, python: str, cfg, images_path: Path, out_path: Path) -> dict:
    """``impl``'s forward outputs on the saved images, computed in its own interpreter."""
    import torch

    _ask(
        impl,
        python,
        "forward",
        cfg,
        str(images_path),
        str(out_path),
        failed="the forward check",
        timeout=1800,
    )
    return torch.load(out_path, weights_only=True)


def forward_frame(outputs: dict[str, dict], rtol: float = FORWARD_RTOL) -> tuple[pd.DataFrame, list[str]]:
    """(table, divergences): each output of each implementation against the first implementation's, as
    max |difference| / max |first|; beyond ``rtol`` (or another shape) is a divergence."""
    impls = list(outputs)
    base = impls[0]
    rows, problems = [], []
    for name in outputs[base]:
        ref = outputs[base][name].float()
        row = {
            "output": name,
            "shape": "x".join(map(str, ref.shape)),
            f"max |{base}|": f"{ref.abs().max().item():.3g}",
        }
        for impl in impls[1:]:
            got = outputs[impl].get(name)
            if got is None or tuple(got.shape) != tuple(ref.shape):
                row[impl] = f"shape {None if got is None else tuple(got.shape)}"
                problems.append(
                    f"{impl}: {name} has shape {None if got is None else tuple(got.shape)}, {base}'s "
                    f"{tuple(ref.shape)}"
                )
                continue
            rel = ((got.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
            row[impl] = f"{rel:.1e}" + (" ✗" if rel > rtol else "")
            if rel > rtol:
                problems.append(
                    f"{impl}: {name} differs from {base}'s by {rel:.2e} of its largest value (tolerance "
                    f"{rtol:g})"
                )
        rows.append(row)
    return pd.DataFrame(rows), problems
