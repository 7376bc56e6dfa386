"""Run records as a pandas frame, and the iterations behind a record: what the report, the plots and
the regression gate read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..config.schema import structure_differences_of
from .metrics import METRICS
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
        ci = (
            throughput_ci(its, w.get("warmup", 0), w.get("end", 0))
            if r["status"] == "ok" and measured == "harness"
            else None
        )
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
                "phases_ms": s.get("phases_ms"),
                "phases_missing": s.get("phases_missing"),
                "phases_notes": s.get("phases_notes"),
                "phases_flops": s.get("phases_flops"),
                "matmul_peak": s.get("matmul_peak_flops_per_process"),
                "host_syncs": s.get("host_syncs_per_step"),
                **{m.name: m.value(s, its) for m in METRICS},  # the measures (harness/records/metrics.py)
                "images_per_s_ci_low": ci[0] if ci else None,
                "images_per_s_ci_high": ci[1] if ci else None,
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
                "seed": ((r.get("config") or {}).get("benchmark") or {}).get("seed", 0),
                # each as shipped, or at its best (config/settings.py); records before the switch: shipped
                "settings": ((r.get("config") or {}).get("benchmark") or {}).get("settings", "shipped"),
                "latency": s.get("batch_sizes"),  # --task infer: stats per batch size
                "accuracy": s.get("accuracy"),  # --task eval: AP on the val split
                "time_to_train_min": s.get("time_to_train_min"),  # MLPerf's logs (harness/records/mlperf.py)
                "noisy": r.get("noisy") or [],
                # the backbone's structure where it is not the canonical config's ({key: (canonical, run)})
                "structure": structure_differences_of(
                    r.get("config")
                ),  # why the numbers are not the machine's alone (harness/machine/telemetry.py)
                "summary": s,  # the whole summary: what a task's own section reads (harness/tasks)
                "path": r.get("_path"),
            }
        )
    return pd.DataFrame(rows)


def phase_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that measured phases (``mrcnn-bench phases``), fastest first."""
    ok = df[(df["status"] == "ok") & df["phases_ms"].map(lambda v: isinstance(v, dict))]
    return ok.sort_values("s_per_iter_mean")
