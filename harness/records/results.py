"""Result files: ``results/runs/<run-id>/<impl>/run.json`` and ``iterations.jsonl``.

Every file is written atomically (a temporary file in the same folder, fsync, then rename), so a
reader sees either the old file or the whole new one, never half of one. ``run.json`` carries its
schema version; readers refuse files from a schema they do not know, with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import secrets
import socket
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = "mrcnn-bench/run"
# The format's history, as pyperf and asv keep theirs: each version, what it added, and how a record of
# the version before is read as this one (``UPGRADES``). Records are never rewritten on disk.
#   1  the first format
#   2  config.benchmark.scaling ("strong"/"weak") and .tf32; environment.nodes, .processes_per_node,
#      .launcher (multi-node and SLURM runs)
#   3  measured_by: "harness" (timed by mrcnn-bench's own timer) or "log" (read from another system's
#      training log by `mrcnn-bench ingest`, with parity_unverified: the reasons its parity is not shown,
#      and from_log: how the times were derived)
SCHEMA_VERSION = 3


def _v1_to_v2(record: dict) -> dict:
    """Version 1 had one launcher (torchrun), strong scaling only, and left TF32 to each framework."""
    bench = record.setdefault("config", {}).setdefault("benchmark", {})
    bench.setdefault("scaling", "strong")
    bench.setdefault("tf32", None)  # not set by the harness: whatever the framework's default was
    env = record.get("environment")
    if isinstance(env, dict):
        env.setdefault("launcher", "torchrun")
        env.setdefault("nodes", None)  # not recorded
        env.setdefault("processes_per_node", None)
    return record


def _v2_to_v3(record: dict) -> dict:
    """Every version-2 record was timed by the harness."""
    record.setdefault("measured_by", "harness")
    return record


UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3}  # version -> its record read as version + 1
STATUSES = ("ok", "failed", "timeout", "oom", "interrupted", "running")
# Rank 0 streams each iteration here while training; the launcher turns it into iterations.jsonl when
# a run dies part-way.
PARTIAL_ITERATIONS = ".iterations.partial.jsonl"

# Each worker's pid and start time, written when it starts (one file per host and rank), so that the
# launcher can find a worker that outlived its torchrun.
WORKER_PIDS = ".worker-{host}-rank{rank}.json"


class ResultError(ValueError):
    """A result file that cannot be read as this version's schema."""


def _summary_model(Open):
    """What every summary may hold: the window, each measure of harness/records/metrics.py, and the tasks' own
    parts."""
    from typing import Optional

    from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt, create_model

    from .metrics import METRICS

    class Score(Open):
        AP: float
        AP50: float

    class Accuracy(Open):
        bbox: Score
        segm: Score
        detections_per_image: Optional[NonNegativeFloat] = None

    class BatchStats(Open):
        batch_size: PositiveInt
        images_per_s: NonNegativeFloat
        latency_ms_mean: NonNegativeFloat

    class Stages(Open):  # --task data at 0 workers: harness/data/stages.py
        ms_per_image: dict[str, NonNegativeFloat]
        batches: PositiveInt
        images: PositiveInt
        calls: dict[str, NonNegativeInt]  # of each stage's calls: read, decode and transform once per image
        transform_holds: str

    count, amount = (Optional[NonNegativeInt], None), (Optional[NonNegativeFloat], None)
    return create_model(
        "Summary",
        __base__=Open,
        warmup=count,
        end=count,
        iterations=count,
        images=count,
        seconds=amount,
        matmul_peak_flops_per_process=amount,
        **{m.name: amount for m in METRICS},
        phases_ms=(Optional[dict[str, float]], None),
        phases_missing=(Optional[dict[str, str]], None),
        phases_notes=(Optional[list[str]], None),
        host_syncs_per_step=amount,
        phases_flops=(Optional[dict[str, float]], None),
        accuracy=(Optional[Accuracy], None),
        task=(Optional[str], None),
        batch_sizes=(Optional[dict[str, BatchStats]], None),
        stages=(Optional[Stages], None),
        stages_missing=(Optional[str], None),
    )


def _config_model(Open):
    """The config a run used, as run.json holds it: the parts the readers group and label runs by."""
    from typing import Literal, Optional

    from pydantic import PositiveInt

    class Solver(Open):
        ims_per_batch: Optional[PositiveInt] = None

    class Benchmark(Open):
        task: Optional[str] = None
        seed: Optional[int] = None
        settings: Optional[Literal["shipped", "best"]] = None
        scaling: Optional[Literal["strong", "weak"]] = None

    class RecordConfig(Open):
        name: Optional[str] = None
        solver: Optional[Solver] = None
        benchmark: Optional[Benchmark] = None

    return RecordConfig


def _record_model():
    """The schema of run.json (this version), checked on every read: every field that the report,
    regress, parity and the plots read is typed here (others may be added: extra keys are allowed)."""
    from typing import Literal, Optional, Union

    from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt, PositiveInt

    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")

    class Window(BaseModel):
        warmup: NonNegativeInt
        end: PositiveInt
        iters: PositiveInt

    Summary = _summary_model(Open)

    class Environment(Open):
        hostname: Optional[str] = None
        cpu: Optional[str] = None
        torch: Optional[str] = None
        torch_threads: Optional[PositiveInt] = None
        load_average: Optional[list[float]] = None
        git_sha: Optional[str] = None
        time: Optional[str] = None
        gpus: Optional[list[str]] = None
        nodes: Optional[PositiveInt] = None
        processes_per_node: Optional[PositiveInt] = None
        launcher: Optional[str] = None

    RecordConfig = _config_model(Open)

    class RunRecord(Open):
        schema_version: Literal[SCHEMA_VERSION]
        run_id: str
        impl: str
        status: Literal[STATUSES]
        reason: Optional[str] = None
        world_size: PositiveInt
        device: str
        dtype: Optional[str] = None
        window: Optional[Window] = None
        summary: Optional[Summary] = None
        iterations_recorded: NonNegativeInt = 0
        config: RecordConfig
        environment: Optional[Environment] = None
        effective_hparams: Optional[dict] = None
        data: Optional[dict] = None
        divergent: Optional[dict[str, str]] = None
        wall_s: Optional[NonNegativeFloat] = None
        measured_by: Literal["harness", "log"] = "harness"
        parity_unverified: Optional[list[str]] = None
        from_log: Optional[Union[str, dict]] = None

    return RunRecord


def _iteration_model():
    """One row of iterations.jsonl: a training iteration or a timed inference call (the fields read)."""
    from typing import Optional

    from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt

    class Iteration(BaseModel):
        model_config = ConfigDict(extra="allow")
        iter: NonNegativeInt
        duration: NonNegativeFloat
        images: NonNegativeInt
        global_images: Optional[NonNegativeInt] = None
        end_time: Optional[float] = None
        data_time: Optional[NonNegativeFloat] = None
        loss: Optional[float] = None
        lr: Optional[float] = None
        max_memory_mb: Optional[NonNegativeFloat] = None
        pixels: Optional[NonNegativeInt] = None
        proposals: Optional[NonNegativeInt] = None
        rois: Optional[NonNegativeInt] = None
        positives: Optional[NonNegativeInt] = None
        rpn_positives: Optional[NonNegativeInt] = None
        phases: Optional[dict[str, float]] = None
        host_syncs: Optional[NonNegativeInt] = None
        batch_size: Optional[NonNegativeInt] = None
        detections: Optional[NonNegativeInt] = None
        masks: Optional[NonNegativeInt] = None

    return Iteration


def _problems(error) -> str:
    return "; ".join(f"key '{'.'.join(map(str, err['loc']))}': {err['msg']}" for err in error.errors())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    """Write ``text`` to ``path`` whole or not at all. ``replace=False``: only where no file of that name
    exists (FileExistsError otherwise, nothing written), decided atomically by the file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` whole or not at all (a temporary file beside it, then renamed)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any, replace: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", replace=replace)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # A partial file streamed by a worker that was killed may end in a cut line.
                raise ResultError(f"{path}:{lineno}: not valid JSON") from None
    return rows


def read_iterations(path: str | os.PathLike) -> list[dict]:
    """iterations.jsonl, each row checked against the schema (ResultError naming the line and key)."""
    from pydantic import ValidationError

    model = _iteration_model()
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, 1):
        try:
            model.model_validate(row)
        except ValidationError as e:
            raise ResultError(
                f"{path}: row {lineno} does not match the iteration schema: {_problems(e)}"
            ) from None
    return rows


def new_run_id() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode != 0:
            return None
        # changed tracked files, the results folder aside (a run rewriting a committed baseline is not changed
        # code)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture_environment(
    device: str | None = None, threads: int | None = None, extra: dict | None = None
) -> dict:
    """What a reader needs to judge a number: versions, devices, CPU, threads, load, git sha."""
    import torch

    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_sha": git_sha(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        env["torchvision"] = None
    if device == "cuda" and torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda_driver"] = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
        # read after training: what was in force, whatever the framework set
        env["tf32"] = {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        }
    else:
        env["gpus"] = []
    if extra:
        env.update(extra)
    return env


def make_run_record(
    *,
    impl: str,
    run_id: str,
    status: str,
    config: dict,
    native_config: Any = None,
    effective_hparams: dict | None = None,
    environment: dict | None = None,
    world_size: int,
    device: str,
    dtype: str,
    window: dict | None = None,
    summary: dict | None = None,
    reason: str | None = None,
    iterations_recorded: int = 0,
    data: dict | None = None,
    extra: dict | None = None,
    measures: str = (
        "training throughput in images/s over iterations [warmup, end) on the global batch; "
        "iteration end stamped after a device synchronize"
    ),
) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "impl": impl,
        "status": status,
        "reason": reason,
        "measures": measures,
        "world_size": world_size,
        "device": device,
        "dtype": dtype,
        "window": window,
        "summary": summary,
        "iterations_recorded": iterations_recorded,
        "config": config,
        "native_config": native_config,
        "effective_hparams": effective_hparams,
        "environment": environment,
        "data": data,
        "measured_by": "harness",
    }
    if extra:
        record.update(extra)
    return record


def load_run(path: str | os.PathLike) -> dict:
    """Read one run.json, checking its schema; ``path`` may be the file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: no such result file") from None
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not an mrcnn-bench run record (key 'schema' should be {SCHEMA!r})")
    version = record.get("schema_version")
    if type(version) is not int or (version != SCHEMA_VERSION and version not in UPGRADES):
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ResultError(
            f"{path}: key 'schema_version' is {version!r}; this mrcnn-bench reads versions "
            f"{min(UPGRADES, default=SCHEMA_VERSION)} to {SCHEMA_VERSION}"
            + (
                " (written by a newer mrcnn-bench: upgrade to read it)"
                if newer
                else " (re-run to regenerate it)"
            )
        )
    if version != SCHEMA_VERSION:
        record["read_from_schema_version"] = version
        while version != SCHEMA_VERSION:
            record = UPGRADES[version](record)
            version += 1
        record["schema_version"] = version
    from pydantic import ValidationError

    try:
        _record_model().model_validate({k: v for k, v in record.items() if k != "schema"})
    except ValidationError as e:
        raise ResultError(
            f"{path}: does not match the run.json schema v{SCHEMA_VERSION}: {_problems(e)}"
        ) from None
    for key in ("summary", "window"):  # what every reader of a finished run takes from it
        if record["status"] == "ok" and not isinstance(record.get(key), dict):
            raise ResultError(f"{path}: status 'ok' but key '{key}' is missing")
    record["_path"] = str(path)
    return record


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run.json below the given files or folders (a run id folder, results/runs, ...)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append(p)
        elif (p / "run.json").is_file():
            found.append(p / "run.json")
        elif p.is_dir():
            found.extend(sorted(p.rglob("run.json")))
        else:
            raise ResultError(f"{p}: no such file or folder")
    return found
