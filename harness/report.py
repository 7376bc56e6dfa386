"""Tables from result files, read with pandas.

The main table follows detectron2's benchmark page: one row per implementation, throughput first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .results import find_runs, load_run


def load_runs(paths: Iterable[str | os.PathLike]) -> list[dict]:
    return [load_run(p) for p in find_runs(paths)]


def runs_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        s = r.get("summary") or {}
        w = r.get("window") or {}
        rows.append(
            {
                "run_id": r["run_id"],
                "impl": r["impl"],
                "status": r["status"],
                "reason": r.get("reason"),
                "images_per_s": s.get("images_per_s"),
                "s_per_iter_median": s.get("s_per_iter_median"),
                "s_per_iter_p10": s.get("s_per_iter_p10"),
                "s_per_iter_p90": s.get("s_per_iter_p90"),
                "data_time_share": s.get("data_time_share"),
                "warmup": w.get("warmup"),
                "end": w.get("end"),
                "world_size": r["world_size"],
                "device": r["device"],
                "dtype": r.get("dtype"),
                "iterations_recorded": r.get("iterations_recorded"),
                "impl_version": (r.get("environment") or {}).get("impl_version"),
                "path": r.get("_path"),
            }
        )
    return pd.DataFrame(rows)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return format(value, spec)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table users read: implementation, img/s, s/iter median, window, world size, device, dtype, status."""
    df = df.sort_values("images_per_s", ascending=False, na_position="last")
    out = pd.DataFrame(
        {
            "Implementation": df["impl"] + df["impl_version"].map(lambda v: f" ({v})" if isinstance(v, str) else ""),
            "Throughput (img/s)": df["images_per_s"].map(lambda v: _fmt(v, ".3f")),
            "s/iter (median)": df["s_per_iter_median"].map(lambda v: _fmt(v, ".4f")),
            "Window": [f"[{w}, {e})" for w, e in zip(df["warmup"], df["end"])],
            "World size": df["world_size"],
            "Device": df["device"],
            "dtype": df["dtype"],
            "Status": [s if s == "ok" else f"{s}: {r}" for s, r in zip(df["status"], df["reason"])],
        }
    )
    return out.reset_index(drop=True)


def render_markdown(records: list[dict]) -> str:
    if not records:
        return "_no runs found_\n"
    table = summary_table(runs_frame(records))
    # disable_numparse: keep our formatting (tabulate would print "1.270" as "1.27")
    return table.to_markdown(index=False, disable_numparse=True) + "\n"


def render(records: list[dict], fmt: str = "md") -> str:
    if fmt == "md":
        return render_markdown(records)
    df = runs_frame(records)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}; expected md, csv or json")


def write_report(paths: Iterable[str | os.PathLike], fmt: str = "md", out: str | None = None) -> str:
    text = render(load_runs(paths), fmt)
    if out:
        from .results import atomic_write_text

        atomic_write_text(Path(out), text)
    return text
