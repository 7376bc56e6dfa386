"""What a task is (``Task``) and what its body gets in a rank (``RankContext``), with the checks tasks share;
the table of tasks is the package's ``__init__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TaskError(ValueError):
    """A run this task cannot do with the given config or data (the command exits 2, nothing started)."""


@dataclass
class RankContext:
    """What a task's body gets in each worker rank: the run's spec (launch.json), the validated config,
    the data, the adapter and its translation of the config (made once), the process group and where
    the results go."""

    impl: str
    spec: dict
    cfg: Any
    data: Any  # harness.data.datasets.DataPaths
    adapter: Any
    native: Any
    dist: Any  # adapters.base.DistInfo
    env_extra: dict  # environment facts of this rank for run.json (cpu set, version, topology)
    run_dir: Path
    trained: dict = field(default_factory=dict)  # what the adapter's train() returned (for run.json)


class Task:
    name: str = ""
    help: str = ""  # --task's help
    trains: bool = True  # its runs train and have a throughput window (the training tables show them)
    phase_ranges: bool = (
        False  # the phases as profiler ranges in the framework's loop (harness/engine/phases.py)
    )
    command: str | None = None  # a command of its own: `mrcnn-bench <command>` = `run --task <name>`
    readme_section: str = "report"  # `report --into`'s section for runs of this task alone
    section_title: str | None = None  # its part of the full report (None: none of its own)

    def check(self, cfg, data_summary: dict) -> None:
        """Raise TaskError when this task cannot run with ``cfg`` on this data."""

    def configure(self, cfg):
        """``cfg`` as this task runs it (the request's config, before any check): unchanged by default."""
        return cfg

    def work(self, bench) -> str:
        """What the launcher announces for one implementation."""
        return f"{bench.iters} iterations"

    def run(self, rank: RankContext) -> None:
        """This rank's part: train or time, and (rank 0) write iterations.jsonl and run.json."""
        raise NotImplementedError

    def section(self, df) -> Any:
        """This task's part of the full report as blocks that ``report`` renders: a DataFrame (a table),
        a str (a paragraph), or a list of them; None for nothing. ``df`` is the runs frame of every run
        reported (the section picks its task's runs, and may read others beside)."""
        return None

    def compact(self, df) -> Any:
        """The README's blocks for runs of this task alone, as ``section`` (None: the training summary's)."""
        return None

    def figures(self, records: list[dict]) -> dict[str, Any]:
        """This task's own plots of its runs' records: {file name: matplotlib figure}, which ``report
        --plots`` saves."""
        return {}


def one_process(cfg) -> None:
    """A check: the task runs on one process."""
    bench = cfg.benchmark
    if bench.gpus != 1:
        raise TaskError(
            f"--task {bench.task} runs on one process (benchmark.gpus={bench.gpus}): use --gpus 1"
        )


def val_split(cfg, data_summary: dict) -> dict:
    """A check: the data set has a val split with images; returns its summary."""
    val = data_summary.get("val")
    if not val or not val.get("images"):
        raise TaskError(
            f"--task {cfg.benchmark.task}: the data set has no val split with images ({cfg.data.val_split})"
        )
    return val
