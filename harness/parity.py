"""The parity table: every implementation's effective hyperparameters beside the canonical value.

Effective values are read back out of each framework's native config, in that framework's own
interpreter (``harness.probe``); the canonical column comes from the config. A cell that differs
from the canonical value is marked, and the framework's own note (why it cannot be set) is listed.
"""
from __future__ import annotations

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
