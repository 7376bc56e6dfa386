"""The process that runs in every rank, started by torch.distributed's launcher.

    python -m torch.distributed.run ... -m mrcnn_bench.harness.run.worker --impl NAME --run-dir DIR

It pins its threads (and, where there are enough cores, its CPU set), joins the process group,
translates the config once through the adapter and runs the task's body (harness/tasks: training
with an IterationTimer attached, or timed inference), which on rank 0 writes ``run.json`` and
``iterations.jsonl`` atomically. While it runs, rank 0 streams every iteration to
``results.PARTIAL_ITERATIONS`` so that a run killed part-way still leaves what it measured; any rank
that fails writes ``error-rank<N>.json`` before exiting non-zero. No worker outlives its run: each
leaves its pid for the launcher (``results.WORKER_PIDS``) and a :class:`Watchdog` ends it when its
launcher or ``mrcnn-bench`` is gone; run.json is written only where the launcher has not written its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path


class Watchdog(threading.Thread):
    """Ends this worker (exit 143, no record) once its launcher (the parent it started under: torchrun,
    or ``mrcnn-bench`` under SLURM) or ``mrcnn-bench`` itself ($MRCNN_BENCH_PID) is gone: torchrun starts
    each worker in a session of its own, so no signal of theirs reaches it when they are killed."""

    def __init__(self, owner_pid: int | None, interval: float = 0.5):
        import psutil

        super().__init__(daemon=True, name="mrcnn-bench-watchdog")
        self.parent = os.getppid()
        self.owner = None
        if owner_pid:
            try:
                self.owner = psutil.Process(owner_pid)
            except psutil.NoSuchProcess:
                self._end(f"mrcnn-bench (pid {owner_pid}) was gone before this worker started")
        self.interval = interval

    def gone(self) -> str | None:
        import psutil

        if os.getppid() != self.parent:
            return f"its launcher (pid {self.parent}) is gone"
        try:
            if self.owner is not None and (
                not self.owner.is_running() or self.owner.status() == psutil.STATUS_ZOMBIE
            ):
                return f"mrcnn-bench (pid {self.owner.pid}) is gone"
        except psutil.NoSuchProcess:
            return f"mrcnn-bench (pid {self.owner.pid}) is gone"
        return None

    def run(self):
        while True:
            why = self.gone()
            if why:
                self._end(why)
            time.sleep(self.interval)

    @staticmethod
    def _end(why: str) -> None:
        try:
            print(
                f"worker {os.getpid()}: {why}; stopping (its run is recorded by the launcher)",
                file=sys.stderr,
                flush=True,
            )
        except (OSError, ValueError):
            pass  # its output pipe went with the launcher
        os._exit(143)


def _leave_pid(run_dir: Path, rank: int) -> None:
    """This worker's pid and start time, for the launcher to stop it should it outlive torchrun."""
    import psutil

    from ..records.results import WORKER_PIDS, atomic_write_json

    me = psutil.Process()
    atomic_write_json(
        run_dir / WORKER_PIDS.format(host=socket.gethostname(), rank=rank),
        {"pid": me.pid, "started": me.create_time()},
    )


def _pin_threads(threads: int, local_rank: int, local_world: int) -> list[int] | None:
    """Give each local rank its own cores when the machine has enough; returns the CPU set used."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= threads * local_world:
        mine = cpus[local_rank * threads : (local_rank + 1) * threads]
        os.sched_setaffinity(0, mine)
        return mine
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)

    run_dir: Path = args.run_dir
    spec = json.loads((run_dir / "launch.json").read_text())
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    _leave_pid(run_dir, rank)
    Watchdog(int(os.environ.get("MRCNN_BENCH_PID", 0)) or None).start()
    try:
        return _run(args.impl, run_dir, spec, rank, world, local_rank, local_world)
    except BaseException as e:
        status = "oom" if _is_oom(e) else ("interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
        from mrcnn_bench.harness.records.results import atomic_write_json

        atomic_write_json(
            run_dir / f"error-rank{rank}.json",
            {
                "rank": rank,
                "status": status,
                "error": f"{type(e).__name__}: {e}".strip(),
                "traceback": traceback.format_exc(limit=30),
            },
        )
        raise


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return (
        type(e).__name__ == "OutOfMemoryError"
        or isinstance(e, MemoryError)
        or (isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))
    )


def topology(world: int, local_world: int, backend: str | None) -> dict:
    """Nodes, processes per node, the launcher, and the collective library and its transport where
    visible (NCCL's version; the NCCL_* / GLOO_* settings of this process, e.g. NCCL_IB_DISABLE,
    NCCL_SOCKET_IFNAME; with NCCL_DEBUG=INFO the log names the transport it chose)."""
    import torch

    nccl = None
    if backend == "nccl":
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {
        "nodes": max(1, world // max(1, local_world)),
        "processes_per_node": local_world,
        "launcher": "slurm" if os.environ.get("MRCNN_BENCH_LAUNCHER") == "slurm" else "torchrun",
        "backend": backend,
        "nccl": nccl,
        "transport_env": {
            k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "GLOO_SOCKET"))
        },
    }


def set_tf32(on: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions, the same for every implementation (torch's own
    defaults differ between the two: matmuls off, convolutions on)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _run(
    impl: str, run_dir: Path, spec: dict, rank: int, world: int, local_rank: int, local_world: int
) -> int:
    """One rank's whole part: set up the process (threads, process group, the adapter and its translation
    of the config), then the task's body (harness/tasks), then leave the process group."""
    import torch.distributed as tdist
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.adapters.base import TaskTraits
    from mrcnn_bench.harness.config import settings
    from mrcnn_bench.harness.config.schema import Config
    from mrcnn_bench.harness.data import check as data_check
    from mrcnn_bench.harness.data.datasets import DataPaths
    from mrcnn_bench.harness.tasks import RankContext, task_of

    cfg = settings.effective_config(Config.model_validate(spec["config"]), impl)  # --best: its config keys
    data = DataPaths(**{k: Path(v) for k, v in spec["data_paths"].items()})
    data_check.register(spec.get("data_index", {}))
    cpus = _pin_threads(spec["threads_per_rank"], local_rank, local_world)
    dist = _setup_distributed(cfg.benchmark, rank, world, local_rank)

    adapter = get_adapter(impl)
    version = adapter.require()
    task = task_of(cfg.benchmark.task)
    adapter.task = TaskTraits(trains=task.trains, phase_ranges=task.phase_ranges)  # what the adapter is told
    native = adapter.translate(cfg, data)
    env_extra = {"cpu_set": cpus, "impl_version": version, **topology(world, local_world, dist.backend)}
    task.run(RankContext(impl, spec, cfg, data, adapter, native, dist, env_extra, run_dir))
    if dist.distributed:
        # The trained model's parameters still carry DistributedDataParallel's gradient hooks, and with
        # them its reducer and the process group: released while the interpreter is whole, so that no
        # gloo/NCCL object is left for the interpreter's own teardown to destroy (a rank aborted there,
        # "terminate called without an active exception", after a finished run).
        adapter.trained_model = None
        gc.collect()
        tdist.barrier()
        tdist.destroy_process_group()
    return 0


def _setup_distributed(bench, rank: int, world: int, local_rank: int):
    """This rank's device (TF32 set alike for every implementation on CUDA) and process group."""
    import torch
    import torch.distributed as tdist
    from mrcnn_bench.adapters.base import DistInfo

    if bench.device == "cuda":
        set_tf32(bench.tf32)
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if world > 1:
        tdist.init_process_group(backend=backend)
    else:
        backend = None
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # A finished rank of a process group: its part is written and the group destroyed. It leaves
        # without the interpreter's teardown, where objects still held by a framework's globals (e.g.
        # detectron2's per-machine group) are destroyed while gloo's threads run: once in CI this aborted
        # a finished rank ("terminate called without an active exception", SIGABRT) and with it the run.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
