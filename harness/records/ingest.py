"""Another system's training log as a run record (``mrcnn-bench ingest``): the same window, the same
throughput definition (images over wall seconds of iterations [warmup, end)) and the same schema as a
measured run, marked ``measured_by: log`` with the reasons its parity is unverified."""

from __future__ import annotations

import statistics
from pathlib import Path

from .logs import LogError, Trace, parse
from .results import atomic_write_json, atomic_write_jsonl, make_run_record

# What the suite shows for its own implementations and cannot for a log.
UNVERIFIED = [
    "effective hyperparameters not read back from the system's own objects (only its config was written)",
    "work counters (proposals, RoIs, positives per iteration) not counted",
    "no device synchronize around the timed iterations: the system's own clock",
]


def ingest(system, logs: list[str | Path], cfg, out_dir: Path, run_id: str) -> dict:
    """Parse ``logs`` (the first is rank 0's or the only one; others are checked against it) of
    ``system`` run with canonical config ``cfg``; write run.json and iterations.jsonl to ``out_dir``."""
    images = system.images_per_iteration(cfg)
    traces: list[Trace] = [parse(system.log_format, path, images) for path in logs]
    main = traces[0]
    warmup, end = cfg.benchmark.warmup, cfg.benchmark.end
    a, b, seconds = main.window_seconds(warmup, end)
    if seconds <= 0:
        raise LogError(f"{main.path}: non-positive time ({seconds:.3f} s) over iterations [{a}, {b})")
    notes = list(main.notes)
    if (a, b) != (warmup, end):
        notes.append(f"the log times iterations [{a}, {b}) (its lines fall there), not [{warmup}, {end})")
    for other in traces[1:]:
        if other.last_iteration != main.last_iteration:
            notes.append(
                f"{other.path} reaches iteration {other.last_iteration}, {main.path} {main.last_iteration}"
            )
    rows = [
        {"iter": i, "duration": d, "images": images, "global_images": images, "derived": True}
        for i, d in main.per_iteration(a, b)
    ]
    t = 0.0
    for row in rows:
        t += row["duration"]
        row["end_time"] = t
    durations = sorted(r["duration"] for r in rows)
    summary = {
        "warmup": a,
        "end": b,
        "iterations": b - a,
        "images": images * (b - a),
        "seconds": seconds,
        "images_per_s": images * (b - a) / seconds,
        "s_per_iter_median": statistics.median(durations),
        "s_per_iter_mean": seconds / (b - a),
        "s_per_iter_p10": None,
        "s_per_iter_p90": None,
    }
    record = make_run_record(
        impl=system.name,
        run_id=run_id,
        status="ok",
        config=cfg.to_dict(),
        native_config=system.translate(cfg).files,
        world_size=cfg.benchmark.gpus,
        device=cfg.benchmark.device,
        dtype=cfg.benchmark.dtype,
        window={"warmup": a, "end": b, "iters": main.last_iteration},
        summary=summary,
        iterations_recorded=len(rows),
        environment={
            "source_logs": [str(Path(p).resolve()) for p in logs],
            "log_format": system.log_format,
            "system": system.title,
            "home": system.home,
        },
        extra={
            "measured_by": "log",
            "parity_unverified": UNVERIFIED + system.translate(cfg).mismatches,
            "from_log": {
                "derivation": main.derivation,
                "notes": notes,
                "per_iteration": "each iteration's time is the mean of the logged interval it lies in",
            },
        },
    )
    atomic_write_jsonl(out_dir / "iterations.jsonl", rows)
    atomic_write_json(out_dir / "run.json", record)
    return record
