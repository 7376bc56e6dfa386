"""Run records as a pandas frame, and the iterations behind a record: what the report, the plots and
the regression gate read."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .results import find_runs, load_run, read_iterations
from .statistics import throughput_ci


def load_runs(paths: Iterable[str | os.PathLike]) -> list[dict]:
    return [load_run(p) for p in find_runs(paths)]


def iterations_of(record: dict) -> list[dict]:
    path = Path(record["_path"]).parent / "iterations.jsonl" if record.get("_path") else None
    return read_iterations(path) if path and path.is_file() else []


def runs_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        s = r.get("summary") or {}
        w = r.get("window") or {}
        env = r.get("environment") or {}
        its = iterations_of(r)
        measured = r.get("measured_by", "harness")
        # a log's per-iteration times are interval means: no interval of img/s from them
        ci = throughput_ci(its, w.get("warmup", 0), w.get("end", 0)) if r["status"] == "ok" and measured == "harness" else None
        peaks = [it["max_memory_mb"] for it in its if it.get("max_memory_mb") is not None]
        rows.append(
            {
                "run_id": r["run_id"],
                "impl": r["impl"],
                "config": (r.get("config") or {}).get("name"),
                "status": r["status"],
                "reason": r.get("reason"),
                "measured_by": measured,
                "log_derivation": (r.get("from_log") or {}).get("derivation"),
                "log_notes": "; ".join((r.get("from_log") or {}).get("notes") or []) or None,
                "parity_unverified": len(r.get("parity_unverified") or []),
                "s_per_iter_mean": s.get("s_per_iter_mean"),
                "phases_ms": s.get("phases_ms"),
                "phases_missing": s.get("phases_missing"),
                "phases_notes": s.get("phases_notes"),
                "host_syncs": s.get("host_syncs_per_step"),
                "images_per_s": s.get("images_per_s"),
                "images_per_s_ci_low": ci[0] if ci else None,
                "images_per_s_ci_high": ci[1] if ci else None,
                "s_per_iter_median": s.get("s_per_iter_median"),
                "s_per_iter_p10": s.get("s_per_iter_p10"),
                "s_per_iter_p90": s.get("s_per_iter_p90"),
                "data_time_share": s.get("data_time_share"),
                "peak_memory_mb": max(peaks) if peaks else None,
                "positives_per_image": s.get("positives_per_image"),
                "rpn_positives_per_image": s.get("rpn_positives_per_image"),
                "rois_per_image": s.get("rois_per_image"),
                "proposals_per_image": s.get("proposals_per_image"),
                "flops_per_image": s.get("flops_per_image"),
                "mfu": s.get("mfu"),
                "warmup": w.get("warmup"),
                "end": w.get("end"),
                "world_size": r["world_size"],
                "scaling": ((r.get("config") or {}).get("benchmark") or {}).get("scaling", "strong"),
                "global_batch": ((r.get("config") or {}).get("solver") or {}).get("ims_per_batch"),
                "nodes": env.get("nodes", 1),
                "device": r["device"],
                "dtype": r.get("dtype"),
                "iterations_recorded": r.get("iterations_recorded"),
                "impl_version": env.get("impl_version"),
                "torch": env.get("torch"),
                "cpu": env.get("cpu"),
                "gpus": ", ".join(sorted(set(env.get("gpus") or []))) or "-",
                "threads": env.get("torch_threads"),
                "load_average": env.get("load_average"),
                "git_sha": env.get("git_sha"),
                "task": ((r.get("config") or {}).get("benchmark") or {}).get("task", "train"),
                "latency": s.get("batch_sizes"),  # --task infer: stats per batch size
                "accuracy": s.get("accuracy"),  # --task eval: AP on the val split
                "path": r.get("_path"),
            }
        )
    return pd.DataFrame(rows)
