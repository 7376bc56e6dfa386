"""What every task's body uses in a worker rank: the partial stream of iterations (kept if the run
dies), progress lines, and run.json's one writer."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mrcnn_bench.harness.engine.timing import TimerListener


class PartialIterations(TimerListener):
    """Rank 0's stream of each iteration (or timed call) as it is measured, flushed line by line: what
    is kept of a run that dies. ``done`` removes it once iterations.jsonl and run.json are written."""

    def __init__(self, run_dir: Path, rank: int):
        from mrcnn_bench.harness.records.results import PARTIAL_ITERATIONS

        self.path = run_dir / PARTIAL_ITERATIONS
        self._file = open(self.path, "w") if rank == 0 else None

    def write(self, row: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def after_step(self, record) -> None:
        self.write(record.to_dict())

    def done(self) -> None:
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)


class Progress(TimerListener):
    """Rank 0 prints the iteration, its loss, time and data wait, and the time left, every ``every``
    iterations."""

    def __init__(self, rank: int, total: int, every: int):
        self.rank, self.total, self.every = rank, total, every
        self._start = time.perf_counter()

    def before_train(self) -> None:
        self._start = time.perf_counter()

    def after_step(self, rec) -> None:
        n = rec.iter + 1
        if self.rank != 0 or not (n % self.every == 0 or n == self.total or n == 1):
            return
        eta = (time.perf_counter() - self._start) / n * (self.total - n)
        loss = f"loss {rec.loss:.3f}  " if rec.loss is not None else ""
        data = f"data {rec.data_time:.3f}s  " if rec.data_time is not None else ""
        say(f"iter {n}/{self.total}  {loss}time {rec.duration:.3f}s  {data}eta {eta:.0f}s")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_record(rank, record_fields: dict, extra: dict | None = None) -> dict:
    """run.json of this rank's run (rank 0): the record with the environment, the native config, the
    settings applied (the run's config as asked, the same for every implementation; ``settings`` what
    --best changed of it for this one) and wall_s (from the launch's start), written once; returns it."""
    from mrcnn_bench.harness.config import settings
    from mrcnn_bench.harness.records.results import capture_environment, make_run_record

    bench = rank.cfg.benchmark
    record = make_run_record(
        impl=rank.impl,
        run_id=rank.spec["run_id"],
        status="ok",
        config=rank.spec["config"],
        effective_hparams=rank.adapter.effective_hparams(rank.native),
        environment=capture_environment(bench.device, rank.spec["threads_per_rank"], extra=rank.env_extra),
        world_size=rank.dist.world_size,
        device=bench.device,
        dtype=bench.dtype,
        data=rank.spec.get("data_summary"),
        extra={**(extra or {}), "settings": settings.record(rank.cfg, rank.impl), **wall(rank.spec)},
        **record_fields,
    )
    write_final(rank.run_dir, record)
    return record


def wall(spec: dict) -> dict:
    """wall_s: seconds from the launch (launch.json's start; rank 0 runs on the launching host) to the
    record."""
    return {"wall_s": round(time.time() - spec["started"], 2)} if "started" in spec else {}


def native_dict(native, extra: dict):
    """The native config as run.json holds it: what the adapter returned, else the object's own dict."""
    found = extra.pop("native_config", None)
    if found is None:
        found = native.to_dict() if hasattr(native, "to_dict") else str(native)
    return found


def write_final(run_dir: Path, record: dict) -> None:
    """run.json, unless the launcher has already written its verdict there (it is final)."""
    from mrcnn_bench.harness.records.results import atomic_write_json

    try:
        atomic_write_json(run_dir / "run.json", record, replace=False)
    except FileExistsError:
        raise RuntimeError(
            f"{run_dir / 'run.json'}: the launcher has already recorded this run; "
            "this worker's result is discarded"
        ) from None
