"""The process that runs in every rank, started by torch.distributed's launcher.

    python -m torch.distributed.run ... -m mrcnn_bench.harness.worker --impl NAME --run-dir DIR

It pins its threads (and, where there are enough cores, its CPU set), joins the process group,
asks the adapter to train with an :class:`IterationTimer` attached, and on rank 0 writes
``run.json`` and ``iterations.jsonl`` atomically. While training, rank 0 streams every iteration to
``results.PARTIAL_ITERATIONS`` so that a run killed part-way still leaves what it measured; any rank
that fails writes ``error-rank<N>.json`` before exiting non-zero. No worker outlives its run: each
leaves its pid for the launcher (``launch.WORKER_PIDS``) and a :class:`Watchdog` ends it when its
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

from mrcnn_bench.harness.timing import TimerListener


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
            if self.owner is not None and (not self.owner.is_running() or self.owner.status() == psutil.STATUS_ZOMBIE):
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
            print(f"worker {os.getpid()}: {why}; stopping (its run is recorded by the launcher)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # its output pipe went with the launcher
        os._exit(143)


def _leave_pid(run_dir: Path, rank: int) -> None:
    """This worker's pid and start time, for the launcher to stop it should it outlive torchrun."""
    import psutil

    from mrcnn_bench.harness.launch import WORKER_PIDS
    from mrcnn_bench.harness.results import atomic_write_json

    me = psutil.Process()
    atomic_write_json(run_dir / WORKER_PIDS.format(host=socket.gethostname(), rank=rank),
                      {"pid": me.pid, "started": me.create_time()})



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


class PartialIterations(TimerListener):
    """Rank 0's stream of each iteration (or timed call) as it is measured, flushed line by line: what
    is kept of a run that dies. ``done`` removes it once iterations.jsonl and run.json are written."""

    def __init__(self, run_dir: Path, rank: int):
        from mrcnn_bench.harness.results import PARTIAL_ITERATIONS

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
    """Rank 0 prints the iteration, its loss, time and data wait, and the time left, every ``every`` iterations."""

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
        print(f"iter {n}/{self.total}  {loss}time {rec.duration:.3f}s  {data}eta {eta:.0f}s", file=sys.stderr, flush=True)


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
        from mrcnn_bench.harness.results import atomic_write_json

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
        "transport_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "GLOO_SOCKET"))},
    }


def set_tf32(on: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions, the same for every implementation (torch's own
    defaults differ between the two: matmuls off, convolutions on)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _run(impl: str, run_dir: Path, spec: dict, rank: int, world: int, local_rank: int, local_world: int) -> int:
    """One rank's whole part: set up, train with the timer, sum the global batch, and on rank 0 write
    the record."""
    import torch.distributed as tdist

    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.harness.config import Config
    from mrcnn_bench.harness.data import DataPaths

    from mrcnn_bench.harness import data_check

    cfg = Config.model_validate(spec["config"])
    data = DataPaths(**{k: Path(v) for k, v in spec["data_paths"].items()})
    data_check.register(spec.get("data_index", {}))
    cpus = _pin_threads(spec["threads_per_rank"], local_rank, local_world)
    dist = _setup_distributed(cfg.benchmark, rank, world, local_rank)

    adapter = get_adapter(impl)
    version = adapter.require()
    native = adapter.translate(cfg, data)
    env_extra = {"cpu_set": cpus, "impl_version": version, **topology(world, local_world, dist.backend)}
    if cfg.benchmark.task == "infer":
        _infer(impl, spec, cfg, data, adapter, native, dist, env_extra, run_dir)
        return 0
    timer, partial = _timer(run_dir, cfg.benchmark, dist)
    try:
        extra = adapter.train(cfg, data, timer, dist) or {}
    finally:
        timer.after_train()
    if len(timer.records) != cfg.benchmark.iters:
        raise RuntimeError(f"{impl}: the adapter ran {len(timer.records)} iterations, {cfg.benchmark.iters} were asked for")
    world_images = _global_images(timer, dist)
    if cfg.benchmark.task == "eval":
        extra["accuracy"] = _accuracy(impl, cfg, data, adapter, dist)
    if rank == 0:
        record = _record(impl, spec, cfg, data, adapter, native, extra, timer, world_images, dist, env_extra, run_dir)
        partial.done()
        s, bench = record["summary"], cfg.benchmark
        print(f"{impl}: {s['images_per_s']:.3f} img/s over iterations [{bench.warmup}, {bench.end}), "
              f"median {s['s_per_iter_median']:.3f} s/iter", file=sys.stderr, flush=True)
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


def _accuracy(impl: str, cfg, data, adapter, dist) -> dict:
    """``--task eval``: the trained model through the framework's eval path on the val split, scored by
    pycocotools (bbox and segm AP, AP50), with detections and masks per image."""
    from mrcnn_bench.harness.inference import evaluate

    print(f"{impl}: evaluating on {data.val_json}", file=sys.stderr, flush=True)
    result = evaluate(adapter.predictor(cfg, data, dist, model=adapter.trained_model), data.val_json, data.val_images)
    print(f"{impl}: bbox AP {result['bbox']['AP']:.4f} (AP50 {result['bbox']['AP50']:.4f}), segm AP {result['segm']['AP']:.4f} "
          f"(AP50 {result['segm']['AP50']:.4f}), {result['detections_per_image']:.1f} detections per image",
          file=sys.stderr, flush=True)
    return result


def _infer(impl: str, spec: dict, cfg, data, adapter, native, dist, env_extra: dict, run_dir: Path) -> None:
    """``--task infer``: the framework's eval path timed per batch size on the val split's images
    (harness/inference.py); iterations.jsonl holds each timed call, run.json the stats per batch size.
    A call that returned nothing fails the run (``EmptyPath``)."""
    import torch

    from mrcnn_bench.harness.inference import check_not_empty, inference_summary, load_images, time_batches
    from mrcnn_bench.harness.results import atomic_write_jsonl, capture_environment, make_run_record

    bench = cfg.benchmark
    predict = adapter.predictor(cfg, data, dist)
    images = [image for _, image in load_images(data.val_json, data.val_images)]
    total = len(bench.batch_sizes) * bench.infer_batches
    partial = PartialIterations(run_dir, dist.rank)

    def on_batch(row):
        partial.write(row)
        n = row["iter"] + 1
        if n == total or n % bench.infer_batches == 0:
            print(f"batch size {row['batch_size']}: {n}/{total} calls, last {row['duration'] * 1e3:.1f} ms, "
                  f"{row['detections']} detections", file=sys.stderr, flush=True)

    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[bench.dtype]
    rows = time_batches(predict, images, bench.batch_sizes, bench.infer_warmup, bench.infer_batches, dist.device,
                        autocast_dtype=autocast, on_batch=on_batch)
    check_not_empty(rows, impl)
    summary = inference_summary(rows)
    atomic_write_jsonl(run_dir / "iterations.jsonl", rows)
    record = make_run_record(
        impl=impl, run_id=spec["run_id"], status="ok", config=cfg.to_dict(), native_config=_native_dict(native, {}),
        effective_hparams=adapter.effective_hparams(native),
        environment=capture_environment(bench.device, spec["threads_per_rank"], extra=env_extra),
        world_size=dist.world_size, device=bench.device, dtype=bench.dtype,
        window={"warmup": 0, "end": len(rows), "iters": len(rows)}, summary=summary, iterations_recorded=len(rows),
        data=spec.get("data_summary"),
        measures=("inference: images/s and latency per call of the framework's own eval path, decoded images in, "
                  "detections with pasted masks out, per batch size; each call closed by a device synchronize"),
    )
    _write_final(run_dir, record)
    partial.done()
    for size, stats in summary["batch_sizes"].items():
        print(f"{impl}: batch {size}: {stats['images_per_s']:.2f} img/s, latency mean {stats['latency_ms_mean']:.1f} ms, "
              f"p99 {stats['latency_ms_p99']:.1f} ms, {stats['detections_per_image']:.1f} detections per image",
              file=sys.stderr, flush=True)


def _native_dict(native, extra: dict):
    """The native config as run.json holds it: what the adapter returned, else the object's own dict."""
    native_dict = extra.pop("native_config", None)
    if native_dict is None:
        native_dict = native.to_dict() if hasattr(native, "to_dict") else str(native)
    return native_dict


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


def _timer(run_dir: Path, bench, dist):
    """The IterationTimer the adapter stamps; rank 0 streams each iteration to the partial file (kept
    if the run dies) and prints progress. Returns (timer, its PartialIterations)."""
    from mrcnn_bench.harness.timing import IterationTimer

    partial = PartialIterations(run_dir, dist.rank)
    progress = Progress(dist.rank, bench.iters, max(1, bench.iters // 20))
    return IterationTimer.for_device(bench.iters, dist.device, listeners=[partial, progress]), partial


def _global_images(timer, dist) -> list[int]:
    """The global batch of each iteration: every rank's own image count, summed."""
    import torch
    import torch.distributed as tdist

    images = torch.tensor([r.images for r in timer.records], dtype=torch.int64)
    if dist.distributed:
        images = images.to(dist.device) if dist.backend == "nccl" else images
        tdist.all_reduce(images)
    return images.cpu().tolist()


def _summary(cfg, data, rows: list[dict], timer, world_images: list[int], dist) -> dict:
    """The window's throughput, its work per image, and its model FLOPs utilisation: the window's
    model FLOPs per image (from the pixels, RoIs and positives it recorded) x images/s over the
    measured matmul peak of every process (calibrated here, with this process's threads, after the window)."""
    from mrcnn_bench.harness.data import num_classes
    from mrcnn_bench.harness.flops import cached_unit_costs, matmul_peak_flops, window_flops_per_image
    from mrcnn_bench.harness.timing import work_per_image

    bench = cfg.benchmark
    summary = timer.summary(bench.warmup, bench.end, world_images).to_dict()
    summary.update(work_per_image(rows, bench.warmup, bench.end))
    flops = window_flops_per_image(cached_unit_costs(cfg, num_classes(cfg, data)), rows, bench.warmup, bench.end)
    peak = matmul_peak_flops(dist.device, bench.dtype)
    summary.update(flops_per_image=flops, matmul_peak_flops_per_process=peak,
                   mfu=(flops * summary["images_per_s"] / (peak * dist.world_size)) if flops else None)
    from mrcnn_bench.harness.phases import PhaseProbe, window_phases

    for probe in timer.of_type(PhaseProbe):  # benchmark.phases: ms per phase over the window, what the framework lacks, its syncs
        summary.update(phases_ms=window_phases(rows, bench.warmup, bench.end), phases_missing=probe.missing,
                       phases_notes=probe.notes, host_syncs_per_step=probe.host_syncs)
    return summary


def _record(impl, spec, cfg, data, adapter, native, extra, timer, world_images, dist, env_extra, run_dir: Path) -> dict:
    """Rank 0: iterations.jsonl and run.json, each written atomically; returns the record."""
    from mrcnn_bench.harness.results import atomic_write_jsonl, capture_environment, make_run_record

    bench = cfg.benchmark
    rows = [r.to_dict() for r in timer.records]
    summary = _summary(cfg, data, rows, timer, world_images, dist)
    atomic_write_jsonl(run_dir / "iterations.jsonl", [dict(row, global_images=g) for row, g in zip(rows, world_images)])
    native_dict = _native_dict(native, extra)
    accuracy = extra.pop("accuracy", None)
    if accuracy is not None:
        summary["accuracy"] = accuracy
    record = make_run_record(
        impl=impl,
        run_id=spec["run_id"],
        status="ok",
        config=cfg.to_dict(),
        native_config=native_dict,
        effective_hparams=adapter.effective_hparams(native),
        environment=capture_environment(bench.device, spec["threads_per_rank"], extra=env_extra),
        world_size=dist.world_size,
        device=bench.device,
        dtype=bench.dtype,
        window={"warmup": bench.warmup, "end": bench.end, "iters": bench.iters},
        summary=summary,
        iterations_recorded=len(timer.records),
        data=spec.get("data_summary"),
        extra={**({"adapter": extra} if extra else {}),
               # the canonical keys this framework ran otherwise, allowed by benchmark.allow_divergent
               "divergent": adapter.divergences(cfg)},
    )
    _write_final(run_dir, record)
    return record


def _write_final(run_dir: Path, record: dict) -> None:
    """run.json, unless the launcher has already written its verdict there (it is final)."""
    from mrcnn_bench.harness.results import atomic_write_json

    try:
        atomic_write_json(run_dir / "run.json", record, replace=False)
    except FileExistsError:
        raise RuntimeError(f"{run_dir / 'run.json'}: the launcher has already recorded this run; "
                           "this worker's result is discarded") from None

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
