"""Tables from result files, read with pandas.

The main table follows detectron2's benchmark page: one row per implementation, throughput first.
Below it: per-implementation detail (img/s with a bootstrap 95% interval, s/iter median/p10/p90,
data-wait share, peak memory, FLOPs and MFU), weak scaling and AMP speed-up where the runs allow,
and the environment each run was measured in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.settings import MODE_TITLES
from ..records.frames import load_runs, phase_runs, runs_frame
from ..records.metrics import show
from ..tasks import Task, tasks


def task_frame(records: list[dict]):
    """The runs frame, with whether each run's task trains (``trains``): what the task sections read."""
    df = runs_frame(records)
    trained = {name for name, task in tasks().items() if task.trains}
    return df.assign(trains=df["task"].isin(trained)) if len(df) else df.assign(trains=[])


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return format(value, spec)


def _show(df: pd.DataFrame, metric: str) -> list[str]:
    """A measure's column as its declaration shows it (harness/records/metrics.py)."""
    return [show(metric, v) for v in df[metric]]


def _md(df: pd.DataFrame | str) -> str:
    """A table as Markdown (a section that is more than one table comes as Markdown already)."""
    if isinstance(df, str):
        return df
    # disable_numparse: keep our formatting (tabulate would print "1.270" as "1.27")
    return df.to_markdown(index=False, disable_numparse=True)


def render_blocks(blocks) -> str | None:
    """A task's section (harness/tasks): a table (DataFrame), a paragraph (str) or a list of them, as
    Markdown; None for None."""
    if blocks is None:
        return None
    if not isinstance(blocks, (list, tuple)):
        blocks = [blocks]
    return "\n\n".join(_md(b) if isinstance(b, pd.DataFrame) else str(b) for b in blocks)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table users read: implementation, img/s, s/iter median, window, world size, device, dtype,
    status."""
    df = df.sort_values("images_per_s", ascending=False, na_position="last")
    mixed = df["settings"].eq("best").any()  # a column of its own once a run took --best
    return pd.DataFrame(
        {
            "Implementation": df["impl"]
            + df["impl_version"].map(lambda v: f" ({v})" if isinstance(v, str) else ""),
            **(
                {"Settings": df["settings"].map(lambda m: "at its best" if m == "best" else "as shipped")}
                if mixed
                else {}
            ),
            "Throughput (img/s)": _show(df, "images_per_s"),
            "s/iter (median)": _show(df, "s_per_iter_median"),
            # the work behind the number: RoIs through the mask head, per image, in the window
            "Positives/img": _show(df, "positives_per_image"),
            "Window": [f"[{w}, {e})" for w, e in zip(df["warmup"], df["end"])],
            "Time to train (min)": df["time_to_train_min"].map(lambda v: _fmt(v, ".2f")),
            "World size": df["world_size"],
            "Device": df["device"],
            "dtype": df["dtype"],
            "Status": [s if s == "ok" else f"{s}: {r}" for s, r in zip(df["status"], df["reason"])],
        }
    ).reset_index(drop=True)


def detail_table(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"].sort_values("images_per_s", ascending=False)
    return pd.DataFrame(
        {
            "Implementation": ok["impl"],
            "Run": ok["run_id"],
            "img/s [95% CI]": [
                f"{_fmt(v, '.3f')} [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]"
                for v, lo, hi in zip(
                    ok["images_per_s"], ok["images_per_s_ci_low"], ok["images_per_s_ci_high"]
                )
            ],
            "s/iter median / p10 / p90": [
                f"{_fmt(m, '.3f')} / {_fmt(a, '.3f')} / {_fmt(b, '.3f')}"
                for m, a, b in zip(ok["s_per_iter_median"], ok["s_per_iter_p10"], ok["s_per_iter_p90"])
            ],
            "data wait": _show(ok, "data_time_share"),
            "peak mem (MB)": _show(ok, "peak_memory_mb"),
            "RPN positives / proposals / RoIs / positives per img": [
                " / ".join(cells)
                for cells in zip(
                    *(
                        _show(ok, f"{c}_per_image")
                        for c in ("rpn_positives", "proposals", "rois", "positives")
                    )
                )
            ],
            "GFLOPs/img": _show(ok, "flops_per_image"),
            "MFU": _show(ok, "mfu"),
            "World": ok["world_size"],
            "dtype": ok["dtype"],
        }
    ).reset_index(drop=True)


def machine_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """What the machine did during each finished run's window (machine/telemetry.py): energy per image,
    img/s per watt, utilisation, clocks, power, throttling, the other processes' CPU, the cost; the
    columns no run measured are left out."""
    from ..records.metrics import MACHINE_METRICS

    ok = df[(df["status"] == "ok") & df["summary"].map(lambda s: bool(s.get("telemetry")))]
    if not len(ok):
        return None
    table = pd.DataFrame({"Implementation": list(ok["impl"]), "Run": list(ok["run_id"])})
    for key in MACHINE_METRICS:
        cells = _show(ok, key)
        if key.endswith("_mean"):  # with the spread of the window's samples: mean [p10, p90]
            stem = key[: -len("_mean")]
            cells = [
                c
                if c == "-"
                else f"{c} [{show(key, t.get(stem + '_p10'))}, {show(key, t.get(stem + '_p90'))}]"
                for c, t in zip(cells, ok["summary"].map(lambda s: s["telemetry"]))
            ]
        if any(c != "-" for c in cells):
            table[f"{key}"] = list(cells)
    parts = ok["summary"].map(lambda s: "+".join(s["telemetry"].get("energy_parts") or []) or "-")
    if "j_per_image" in table:
        table["energy of"] = list(parts)
    missing = ok["summary"].map(
        lambda s: "; ".join(f"{k}: {v}" for k, v in (s.get("telemetry_missing") or {}).items())
    )
    table["not measured"] = [m or "-" for m in missing]
    return table.rename(columns=_MACHINE_HEADERS)


_MACHINE_HEADERS = {
    "j_per_image": "J/img",
    "images_per_s_per_w": "img/s per W",
    "gpu_util_mean": "GPU util",
    "sm_mhz_mean": "SM MHz",
    "gpu_power_w_mean": "GPU W",
    "throttle_share": "throttled",
    "cpu_util_mean": "CPU util",
    "cpu_mhz_mean": "CPU MHz",
    "others_cpu_share": "others' CPU",
    "usd_per_1000_images": "USD / 1000 img",
}


def noisy_notes(df: pd.DataFrame) -> list[str]:
    """A footnote per run whose numbers are not the machine's alone, naming the cause."""
    return [
        f"- **noisy**: {impl} ({run}): {'; '.join(causes)}"
        for impl, run, causes in zip(df["impl"], df["run_id"], df["noisy"])
        if causes
    ]


def structure_notes(df: pd.DataFrame) -> list[str]:
    """A line per scenario whose runs did not train the canonical model's structure, naming what differs."""
    seen = {}
    for config, impl, diff in zip(df["config"], df["impl"], df["structure"]):
        if diff:
            key = (
                config,
                "; ".join(
                    f"{k} {run} (canonical {canonical})" for k, (canonical, run) in sorted(diff.items())
                ),
            )
            seen.setdefault(key, []).append(impl)
    return [
        f"- **not the canonical model**: {config} ({', '.join(sorted(set(impls)))}): {what}"
        for (config, what), impls in seen.items()
    ]


def scaling_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Throughput per process count, one series per implementation, dtype and scaling mode, with the
    scaling efficiency img/s(N) / (N x img/s(1)) (against the smallest N of the series when it has no
    N = 1). Strong scaling keeps the global batch; weak keeps the images per process."""
    ok = df[df["status"] == "ok"]
    rows = []
    for (impl, dtype, mode), g in ok.groupby(["impl", "dtype", "scaling"]):
        if g["world_size"].nunique() < 2:
            continue
        per = g.groupby("world_size")["images_per_s"].median()
        batch = g.groupby("world_size")["global_batch"].first()
        nodes = g.groupby("world_size")["nodes"].max()
        base_n = per.index.min()
        for n, v in per.items():
            rows.append(
                {
                    "Implementation": impl,
                    "dtype": dtype,
                    "Scaling": mode,
                    "Processes": n,
                    "Nodes": nodes[n],
                    "Global batch": batch[n],
                    "img/s": f"{v:.3f}",
                    "img/s per process": f"{v / n:.3f}",
                    f"Efficiency vs N={base_n}": f"{100 * (v / n) / (per[base_n] / base_n):.1f}%",
                }
            )
    return pd.DataFrame(rows) if rows else None


def amp_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """AMP speed-up: img/s with bf16/fp16 over fp32, same implementation and world size."""
    ok = df[df["status"] == "ok"]
    rows = []
    for (impl, n), g in ok.groupby(["impl", "world_size"]):
        fp32 = g[g["dtype"] == "fp32"]["images_per_s"]
        for dtype in ("bf16", "fp16"):
            amp = g[g["dtype"] == dtype]["images_per_s"]
            if len(fp32) and len(amp):
                rows.append(
                    {
                        "Implementation": impl,
                        "World size": n,
                        "fp32 img/s": f"{fp32.median():.3f}",
                        "AMP": dtype,
                        "AMP img/s": f"{amp.median():.3f}",
                        "Speed-up": f"{amp.median() / fp32.median():.2f}x",
                    }
                )
    return pd.DataFrame(rows) if rows else None


def _median_range(values: pd.Series, spec: str = ".3f", suffix: str = "") -> str:
    return f"{values.median():{spec}}{suffix} [{values.min():{spec}}, {values.max():{spec}}]"


def repeats_table(df: pd.DataFrame, reference: str = "reference") -> pd.DataFrame | None:
    """Repeated runs of one scenario (same config, world size, device, dtype; two or more run ids):
    each implementation's img/s over the runs, its spread, and the reference's speed over it within each
    run (ratios taken inside one run, where every implementation met the same machine load)."""
    ok = df[df["status"] == "ok"]
    rows = []
    modes = ok["settings"].eq("best").any()  # a run took --best: every scenario names its mode
    groups = ok.groupby(["settings", "config", "world_size", "device", "dtype"])
    for (settings, config, n, device, dtype), g in sorted(
        groups, key=lambda kv: (kv[0][0] != "best", kv[0][1:])
    ):
        if g["run_id"].nunique() < 2:
            continue
        per_run = g.pivot_table(index="run_id", columns="impl", values="images_per_s", aggfunc="median")
        scenario = f"{config}, {n} × {device}, {dtype}" + (f", {MODE_TITLES[settings]}" if modes else "")
        ratio_col = f"{reference} ÷ this, per run: median [min, max]"
        for impl in per_run.median().sort_values(ascending=False).index:
            v = per_run[impl].dropna()
            row = {
                "Scenario": scenario,
                "Implementation": impl,
                "Runs": len(v),
                "img/s: median [min, max]": _median_range(v),
                "Spread (max-min)/median": f"{100 * (v.max() - v.min()) / v.median():.1f}%",
                ratio_col: "-",
            }
            if reference in per_run and impl != reference:
                row[ratio_col] = _median_range((per_run[reference] / per_run[impl]).dropna(), ".2f", "×")
            rows.append(row)
        peers = [c for c in per_run.columns if c != reference]
        if reference in per_run and peers:
            fastest = per_run[peers].max(axis=1)
            ratio = (per_run[reference] / fastest).dropna()
            rows.append(
                {
                    "Scenario": scenario,
                    "Implementation": "fastest other (per run)",
                    "Runs": len(ratio),
                    "img/s: median [min, max]": _median_range(fastest),
                    "Spread (max-min)/median": "-",
                    ratio_col: _median_range(ratio, ".2f", "×"),
                }
            )
    return pd.DataFrame(rows) if rows else None


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    return (
        pd.DataFrame(
            {
                "Run": df["run_id"],
                "Implementation": df["impl"],
                "torch": df["torch"],
                "CPU": df["cpu"],
                "GPUs": df["gpus"],
                "threads/process": df["threads"],
                "load average (1/5/15 min)": df["load_average"].map(
                    lambda v: " / ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else "-"
                ),
                "git": df["git_sha"].map(
                    lambda v: (
                        v[:12] + ("-dirty" if v and v.endswith("-dirty") else "")
                        if isinstance(v, str)
                        else "-"
                    )
                ),
            }
        )
        .drop_duplicates()
        .reset_index(drop=True)
    )


def log_table(df: pd.DataFrame) -> pd.DataFrame:
    """Runs read from other systems' own logs (``mrcnn-bench ingest``): their throughput by the same
    definition over the window the log allows, how it was derived, and that parity is unverified."""
    df = df.sort_values("images_per_s", ascending=False)
    return pd.DataFrame(
        {
            "System": df["impl"],
            "Throughput (img/s)": df["images_per_s"].map(lambda v: _fmt(v, ".3f")),
            "s/iter (mean)": df["s_per_iter_mean"].map(lambda v: _fmt(v, ".4f")),
            "Window": [f"[{w}, {e})" for w, e in zip(df["warmup"], df["end"])],
            "Time to train (min)": df["time_to_train_min"].map(lambda v: _fmt(v, ".2f")),
            "World size": df["world_size"],
            "dtype": df["dtype"],
            "From the log": [
                d + (f"; {n}" if isinstance(n, str) else "")
                for d, n in zip(df["log_derivation"], df["log_notes"])
            ],
            "Parity": df["parity_unverified"].map(lambda n: f"unverified ({n} reasons in run.json)"),
        }
    ).reset_index(drop=True)


def phases_table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]] | None:
    """ms per iteration of each phase (the window's mean) per implementation, fastest first, and the
    host-device waits of one step; the footnotes (why a phase is "— [n]") and the frameworks' notes."""
    from ..engine.phases import PHASES

    ok = phase_runs(df)
    if not len(ok):
        return None
    footnotes: list[str] = []
    notes: list[str] = []
    columns = {}
    for _, row in ok.iterrows():
        values, missing = row["phases_ms"], row["phases_missing"] or {}
        cells = []
        for phase in PHASES:
            if phase in values:
                cells.append(f"{values[phase]:.1f}")
            else:
                why = missing.get(phase, "not timed in this run")
                footnotes.append(f"{row['impl']}, {phase}: {why}")
                cells.append(f"— [{len(footnotes)}]")
        cells.append(f"{1e3 * row['s_per_iter_mean']:.1f}")
        cells.append(str(row["host_syncs"]) if row["host_syncs"] is not None else "—")
        columns[row["impl"]] = cells
        notes += [f"{row['impl']}: {n}" for n in row["phases_notes"] or []]
    table = pd.DataFrame(
        {"phase (ms per iteration)": PHASES + ["total", "host-device waits per step"], **columns}
    )
    return table, footnotes, notes


def phases_mfu_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Each network phase's model FLOPs over its time, as a share of the run's measured matmul peak
    (engine/flops.window_phase_flops: the same FLOPs for every implementation doing the same work),
    and the whole step's; None when no run recorded them."""
    from ..engine.phases import BACKBONE, BACKWARD, BOX_HEAD, FPN, MASK_HEAD, RPN_HEAD

    ok = phase_runs(df)
    ok = ok[ok["phases_flops"].map(lambda v: isinstance(v, dict)) & ok["matmul_peak"].map(lambda v: bool(v))]
    if not len(ok):
        return None
    phases = [BACKBONE, FPN, RPN_HEAD, BOX_HEAD, MASK_HEAD, BACKWARD]
    columns = {}
    for _, row in ok.iterrows():
        flops, ms, peak = row["phases_flops"], row["phases_ms"], row["matmul_peak"]
        cells = [f"{100 * flops[p] / (ms[p] / 1e3) / peak:.0f}%" if ms.get(p) else "—" for p in phases]
        cells.append(f"{100 * flops['total'] / row['s_per_iter_mean'] / peak:.0f}%")
        columns[row["impl"]] = cells
    gflops = [f"{ok.iloc[0]['phases_flops'][p] / 1e9:.0f}" for p in phases] + [
        f"{ok.iloc[0]['phases_flops']['total'] / 1e9:.0f}"
    ]
    return pd.DataFrame(
        {
            "MFU (model FLOPs / time / matmul peak)": phases + ["whole step"],
            f"GFLOP per iteration ({ok.iloc[0]['impl']})": gflops,
            **columns,
        }
    )


def phases_paragraph(df: pd.DataFrame, top: int = 3) -> str | None:
    """For each implementation beside the fastest: its extra ms per iteration and the phases that
    account for most of it, with their share. Numbers only."""
    ok = phase_runs(df)
    if len(ok) < 2:
        return None
    fastest = ok.iloc[0]
    lines = []
    for _, row in ok.iloc[1:].iterrows():
        gap = 1e3 * (row["s_per_iter_mean"] - fastest["s_per_iter_mean"])
        common = [p for p in row["phases_ms"] if p in fastest["phases_ms"]]
        diffs = sorted(((row["phases_ms"][p] - fastest["phases_ms"][p], p) for p in common), reverse=True)[
            :top
        ]
        parts = (
            ", ".join(f"{p} {d:+.1f} ms ({100 * d / gap:.0f}%)" for d, p in diffs if d > 0) if gap > 0 else ""
        )
        lines.append(
            f"- {row['impl']}: {gap:+.1f} ms per iteration against {fastest['impl']}"
            + (f"; most of it: {parts}." if parts else ".")
        )
    return "\n".join(lines)


def phases_markdown(records: list[dict]) -> str | None:
    """The phases section: table, footnotes, and the paragraph on the gaps."""
    df = runs_frame(records)
    result = phases_table(df)
    if result is None:
        return None
    table, footnotes, notes = result
    parts = [_md(table)]
    if footnotes or notes:
        parts += [""] + [f"[{i}] {n}  " for i, n in enumerate(footnotes, 1)] + [f"{n}  " for n in notes]
    paragraph = phases_paragraph(df)
    if paragraph:
        parts += ["", paragraph]
    mfu = phases_mfu_table(df)
    if mfu is not None:
        parts += [
            "",
            _md(mfu),
            "",
            "Each phase's FLOPs are counted on the reference's modules for the run's own "
            "pixels, RoIs and positives (forward and backward; RoIAlign, NMS and elementwise work count as "
            "zero); the peak is the run's measured matmul rate with its threads.",
        ]
    return "\n".join(parts) + "\n"


def render_markdown(records: list[dict], detail: bool = True) -> str:
    if not records:
        return "_no runs found_\n"
    df = task_frame(records)
    notes = structure_notes(df) + noisy_notes(df)
    # the sections of tasks that do not train (inference) close the report; those that do follow the summary
    apart = [task for task in tasks().values() if not task.trains]
    apart_part = []
    for task in apart:
        runs = df[df["task"] == task.name]
        if len(runs):
            # the whole frame: a section may set its runs beside others (data: training)
            text = render_blocks(task.section(df))
            failed = runs[runs["status"] != "ok"]
            apart_part += ["", f"### {task.section_title}", ""] + ([text] if text is not None else [])
            apart_part += [
                f"- {i}: {st}: {why}"
                for i, st, why in zip(failed["impl"], failed["status"], failed["reason"])
            ]
    df = df[~df["task"].isin([task.name for task in apart])]
    if not len(df):
        return "\n".join(apart_part[1:] + ([""] + notes if notes else [])) + "\n"
    logs = df[df["measured_by"] == "log"]
    df = df[df["measured_by"] != "log"]
    log_part = (
        [
            "",
            "### From the systems' own logs (not measured by mrcnn-bench; parity unverified)",
            "",
            _md(log_table(logs)),
        ]
        if len(logs)
        else []
    )
    if not len(df):
        return "\n".join(log_part[1:]) + "\n"
    parts = [_md(summary_table(df))] + ([""] + notes if notes else [])
    for task in tasks().values():
        text = render_blocks(task.section(df)) if task.trains and task.section_title else None
        if text is not None:
            parts += ["", f"### {task.section_title}", "", text]
    if not detail:
        return "\n".join(parts + log_part + apart_part) + "\n"
    if (df["status"] == "ok").any():
        parts += ["", "### Detail", "", _md(detail_table(df))]
    for title, table in (
        ("### Repeated runs", repeats_table(df)),
        ("### Scaling", scaling_table(df)),
        ("### AMP speed-up", amp_table(df)),
        ("### What the machine did during the window", machine_table(df)),
    ):
        if table is not None:
            parts += ["", title, "", _md(table)]
    parts += log_part + apart_part
    phases = phases_markdown([r for r in records if r.get("measured_by", "harness") == "harness"])
    if phases:
        parts += [
            "",
            "### Where the time goes (ms per iteration, the window's mean)",
            "",
            phases.rstrip("\n"),
        ]
    parts += ["", "### Environment", "", _md(environment_table(df))]
    return "\n".join(parts) + "\n"


def into_markers(section: str = "report") -> tuple[str, str]:
    """The lines between which ``write_into`` puts a generated block: one pair per section of a file."""
    return f"<!-- mrcnn-bench {section}: begin -->", f"<!-- mrcnn-bench {section}: end -->"


def _only_task(df: pd.DataFrame):
    """The task of every run in ``df`` when they share one, else None."""
    names = set(df["task"]) if len(df) else set()
    return tasks().get(names.pop()) if len(names) == 1 else None


def readme_section(records: list[dict]) -> str:
    """The README section a set of runs goes into with ``report --into``: their task's (inference runs
    into "inference", accuracy runs into "accuracy"); training runs, or a mix, into "report"."""
    task = _only_task(runs_frame(records))
    return task.readme_section if task else "report"


def scenario_section(path: Path, section: str, scenario: str | None) -> str:
    """``section`` of ``path``, or "<section> <scenario>" where the file has markers of its own for that
    scenario (the README keeps one table per scenario: "report cpu_canonical", "phases cpu_canonical")."""
    if scenario and into_markers(f"{section} {scenario}")[0] in path.read_text():
        return f"{section} {scenario}"
    return section


def compact_markdown(records: list[dict]) -> str:
    """The short form for a README: the task's own table when all the runs share a task that has one
    (latency of inference runs, accuracy of accuracy runs); else the repeated-runs table when runs
    repeat, else the summary table."""
    df = task_frame(records)
    task = _only_task(df)
    if task is not None and type(task).compact is not Task.compact:
        text = render_blocks(task.compact(df))
        return text + "\n" if text is not None else "_no run finished_\n"
    table = repeats_table(df) if len(df) else None
    return _md(table if table is not None else summary_table(df)) + "\n"


def write_report_into(path: Path, records: list[dict], command: str) -> None:
    """``report --into``: the runs' short table into the file's section for their task (and scenario)."""
    names = {(r.get("config") or {}).get("name") for r in records}
    write_into(
        path,
        compact_markdown(records),
        command,
        readme_section(records),
        names.pop() if len(names) == 1 else None,
    )


def write_into(
    path: Path, block: str, command: str, section: str = "report", scenario: str | None = None
) -> None:
    """Replace what lies between the ``section`` markers in ``path`` (atomically; those of the scenario's
    own section where the file has them); the markers must be there."""
    from ..records.results import atomic_write_text

    text = path.read_text()
    begin, end = into_markers(scenario_section(path, section, scenario))
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path}: expected one '{begin}' line followed by one '{end}' line")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    atomic_write_text(path, f"{head}{begin}\n_Generated by `{command}`._\n\n{block}{end}{tail}")


def render(records: list[dict], fmt: str = "md") -> str:
    if fmt == "md":
        return render_markdown(records)
    df = runs_frame(records).drop(columns=["summary"])  # its measures are columns already
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}; expected md, csv or json")


def write_report(
    paths: Iterable[str | os.PathLike],
    fmt: str = "md",
    out: str | None = None,
    plots: str | None = None,
    preamble: str | None = None,
    records: list[dict] | None = None,
) -> str:
    """The report over the runs under ``paths`` (or the ``records`` already loaded from them)."""
    records = load_runs(paths) if records is None else records
    text = (preamble or "") + render(records, fmt)
    if out:
        from ..records.results import atomic_write_text

        atomic_write_text(Path(out), text)
    if plots:
        from .plots import write_plots

        write_plots(records, Path(plots))
    return text
