"""Parity: do the implementations do the same work?

The static table: every implementation's effective hyperparameters beside the canonical value.
Effective values are read back out of each framework's native config (and its scheduler, probed),
in that framework's own interpreter (``harness.probe``); the canonical column comes from the config.
A cell that differs from the canonical value is marked, and the framework's own note (why it cannot
be set) is listed.

The trajectory check (:func:`trajectory_frame`): what each implementation of one run actually did,
from its ``iterations.jsonl``: the learning rate of every iteration against the canonical schedule,
the global batch of every iteration, and the work per image over the timed window (positive RoIs
through the mask head) against the other implementations'.
"""
from __future__ import annotations

import bisect
import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def canonical_values(cfg, num_classes: int | None = None) -> dict:
    """The canonical config in the keys adapters report, with derived keys resolved."""
    flat = _flatten(cfg.to_dict())
    flat["model.backbone.norm"] = cfg.model.effective_norm
    flat["model.backbone.freeze_at"] = cfg.model.effective_freeze_at
    flat["model.num_classes"] = cfg.model.num_classes or num_classes
    flat["model.rpn.post_nms_topk_scope"] = "per image"
    flat["solver.ims_per_batch_per_process"] = cfg.ims_per_gpu
    return flat


def effective_for(impl: str, python: str, cfg, data_root: str | None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg.to_dict(), f)
        path = f.name
    try:
        cmd = [python, "-m", "mrcnn_bench.harness.probe", "effective", impl, path]
        if data_root:
            cmd.append(str(data_root))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        Path(path).unlink(missing_ok=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"{impl}: reading effective hyperparameters failed: {lines[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["effective"]


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
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


def trajectory_frame(records: list[dict], band: float = POSITIVES_BAND) -> tuple[pd.DataFrame, list[str]]:
    """(table, divergences) for the implementations of one run; no divergence means the same schedule,
    the same global batch at every iteration and positives per image within ``band`` of the median."""
    from .report import iterations_of
    from .timing import work_per_image

    rows, problems, positives = [], [], {}
    for rec in records:
        impl, cfg, w = rec["impl"], rec["config"], rec.get("window")
        its = iterations_of(rec) if rec["status"] == "ok" else []
        row = {"Implementation": impl, "Status": rec["status"]}
        if not its or not w:
            problems.append(f"{impl}: {rec['status']}" + (f": {rec.get('reason')}" if rec.get("reason") else "") + " (nothing to compare)")
            rows.append(row)
            continue
        worst, first = _lr_divergence(its, cfg["solver"])
        row["lr: max relative error"] = "-" if worst is None else f"{worst:.1e}"
        if first:
            problems.append(f"{impl}: {first}")
        batch = cfg["solver"]["ims_per_batch"]
        wrong = [r["iter"] for r in its if r.get("global_images", r["images"]) != batch]
        row["images/iter"] = f"{batch} at every iteration" if not wrong else f"≠ {batch} at {len(wrong)} iterations"
        if wrong:
            problems.append(f"{impl}: global batch is not {batch} at iteration(s) {wrong[:5]}")
        work = work_per_image(its, w["warmup"], w["end"])
        for key in ("proposals", "rois", "positives"):
            v = work[f"{key}_per_image"]
            row[f"{key}/img"] = "-" if v is None else f"{v:.1f}"
        if work["positives_per_image"] is None:
            problems.append(f"{impl}: no work counters in its iterations.jsonl (recorded before they existed?)")
        else:
            positives[impl] = work["positives_per_image"]
        rows.append(row)
    if positives:
        median = float(pd.Series(positives).median())
        for row in rows:
            p = positives.get(row["Implementation"])
            if p is None:
                continue
            off = p / median - 1 if median else 0.0
            row["positives vs median"] = f"{100 * off:+.1f}%"
            if abs(off) > band:
                problems.append(f"{row['Implementation']}: {p:.1f} positives per image, {100 * off:+.1f}% from the median "
                                f"{median:.1f} (band ±{100 * band:.0f}%)")
    return pd.DataFrame(rows), problems
